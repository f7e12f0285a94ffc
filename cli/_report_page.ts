/**
 * The self-contained HTML page the reports are written into: inline CSS,
 * a Content-Security-Policy that forbids every network load, and the
 * inline script that pans and zooms the time-axis SVGs (wheel to zoom
 * around the pointer, drag to pan, buttons, double-click to reset) and
 * redraws their axis ticks.
 *
 * @module
 */

import { esc } from "./_svg.ts";

const CSS = `
body{font:13px/1.4 system-ui,sans-serif;margin:16px 24px;color:#222;background:#fff}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:22px 0 6px;border-bottom:1px solid #ddd}
h3{font-size:14px;margin:14px 0 4px}
table{border-collapse:collapse;margin:6px 0}td,th{border:1px solid #ddd;padding:2px 8px;text-align:right}
th{background:#f4f4f4}td.l,th.l{text-align:left}.epochs td:last-child{text-align:left}tr.fail td{background:#fde8e8}tr.pass td{background:#eef8ee}
.muted{color:#777}.legend span{display:inline-block;margin-right:12px}.legend i{display:inline-block;width:11px;height:11px;margin-right:4px;vertical-align:-1px}
svg text{font:11px system-ui,sans-serif}svg .label{font-weight:600}svg .ticklabel{fill:#666;font-size:10px}
svg .tick{stroke:#eee}svg .rowline{stroke:#f0f0f0}svg .edge{stroke:#999;fill:none}
svg .node rect{fill:#f7f7ff;stroke:#557}svg .node .drv{font-weight:700}
.zoomable{border:1px solid #ddd;cursor:grab;user-select:none;display:block}
.zoombar button{margin-right:4px}.verdict.fail{color:#b00;font-weight:700}.verdict.pass{color:#2e7d32}.mono{font-family:ui-monospace,monospace}
`;

/** The zoom script (no dependencies; runs on every `svg.zoomable`). */
const SCRIPT = `
(function(){
  function fmt(unit,v){
    if(unit==="clock")return String(v);
    if(unit==="bytes"){var u=["B","KiB","MiB","GiB","TiB"],i=0;while(Math.abs(v)>=1024&&i<u.length-1){v/=1024;i++}
      return (Number.isInteger(v)?v:v.toFixed(v<10?2:1))+" "+u[i];}
    if(v<1000)return (v<10?v.toFixed(2):v.toFixed(0))+" \\u00b5s";
    if(v<1e6)return (v/1000).toFixed(v<1e4?2:1)+" ms";return (v/1e6).toFixed(2)+" s";
  }
  function ticks(lo,hi,n){var span=hi-lo;if(!(span>0))return[lo];var raw=span/n,mag=Math.pow(10,Math.floor(Math.log10(raw)));
    var steps=[1,2,5,10].map(function(m){return m*mag}),step=steps.find(function(s){return s>=raw});var out=[];
    for(var t=Math.ceil(lo/step)*step;t<=hi+step*1e-9;t+=step)out.push(Number(t.toPrecision(12))+0);return out;}
  var NS="http://www.w3.org/2000/svg";
  function setup(svg){
    var lo=+svg.dataset.lo,hi=+svg.dataset.hi,L=+svg.dataset.labelW,W=+svg.dataset.plotW,A=+svg.dataset.axisH,unit=svg.dataset.unit;
    var plot=svg.querySelector("g.plot"),axis=svg.querySelector("g.axis"),H=+svg.getAttribute("height")-4;
    var view={a:lo,b:hi};
    function draw(){
      var k=W/(view.b-view.a);plot.setAttribute("transform","scale("+k+",1) translate("+(-view.a)+",0)");
      while(axis.firstChild)axis.removeChild(axis.firstChild);
      ticks(view.a,view.b,8).forEach(function(t){var x=L+(t-view.a)*k;
        var ln=document.createElementNS(NS,"line");ln.setAttribute("x1",x);ln.setAttribute("x2",x);ln.setAttribute("y1",A-4);ln.setAttribute("y2",H);ln.setAttribute("class","tick");axis.appendChild(ln);
        var tx=document.createElementNS(NS,"text");tx.setAttribute("x",x+2);tx.setAttribute("y",A-7);tx.setAttribute("class","ticklabel");tx.textContent=fmt(unit,t);axis.appendChild(tx);});
      svg.dataset.viewA=view.a;svg.dataset.viewB=view.b;
    }
    function zoom(f,at){var span=view.b-view.a,ns=Math.max((hi-lo)/1e6,Math.min(hi-lo,span*f));var c=at===undefined?view.a+span/2:at;
      var r=(c-view.a)/span;view.a=c-r*ns;view.b=view.a+ns;clamp();draw();}
    function clamp(){var s=view.b-view.a;if(view.a<lo){view.a=lo;view.b=lo+s}if(view.b>hi){view.b=hi;view.a=hi-s}}
    function at(ev){var r=svg.getBoundingClientRect();return view.a+((ev.clientX-r.left-L)/W)*(view.b-view.a);}
    svg.addEventListener("wheel",function(ev){ev.preventDefault();zoom(ev.deltaY<0?0.8:1.25,at(ev));},{passive:false});
    var drag=null;svg.addEventListener("mousedown",function(ev){drag={x:ev.clientX,a:view.a,b:view.b};});
    window.addEventListener("mousemove",function(ev){if(!drag)return;var d=(ev.clientX-drag.x)/W*(drag.b-drag.a);view.a=drag.a-d;view.b=drag.b-d;clamp();draw();});
    window.addEventListener("mouseup",function(){drag=null;});
    svg.addEventListener("dblclick",function(){view.a=lo;view.b=hi;draw();});
    var bar=document.querySelector('.zoombar[data-for="'+svg.id+'"]');
    if(bar)bar.addEventListener("click",function(ev){var z=ev.target.dataset&&ev.target.dataset.zoom;if(!z)return;
      if(z==="reset"){view.a=lo;view.b=hi;draw();}else zoom(+z);});
    svg.blkgraphZoom=function(a,b){view.a=a;view.b=b;clamp();draw();};
    draw();
  }
  document.querySelectorAll("svg.zoomable").forEach(setup);
  document.body.dataset.ready="1";
})();
`;

/** Zoom buttons for the zoomable SVG `id`. */
export function zoomBar(id: string): string {
  return `<div class="zoombar" data-for="${esc(id)}"><button data-zoom="0.5">zoom in</button><button data-zoom="2">zoom out</button>` +
    `<button data-zoom="reset">reset</button> <span class="muted">wheel: zoom · drag: pan · double-click: reset</span></div>`;
}

/** A legend of coloured swatches. */
export function legend(entries: [string, string][]): string {
  return `<div class="legend">${
    entries.map(([name, colour]) => `<span><i style="background:${esc(colour)}"></i>${esc(name)}</span>`).join("")
  }</div>`;
}

/** A table: header cells and rows of cells (markup); the first column is left-aligned. */
export function table(head: string[], rows: string[][], rowClass?: (i: number) => string | undefined): string {
  const th = head.map((h, i) => `<th${i === 0 ? ' class="l"' : ""}>${h}</th>`).join("");
  const body = rows.map((r, i) => {
    const c = rowClass?.(i);
    return `<tr${c ? ` class="${c}"` : ""}>${r.map((d, j) => `<td${j === 0 ? ' class="l"' : ""}>${d}</td>`).join("")}</tr>`;
  }).join("");
  return `<table><thead><tr>${th}</tr></thead><tbody>${body}</tbody></table>`;
}

/** A whole self-contained page: nothing in it may load anything from anywhere. */
export function page(title: string, body: string): string {
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:">
<title>${esc(title)}</title><style>${CSS}</style></head>
<body>
${body}
<script>${SCRIPT}</script>
</body></html>
`;
}

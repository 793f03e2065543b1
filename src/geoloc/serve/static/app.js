// The geoloc search page: a query goes to POST /search (or /explain); the top tiles are listed
// as thumbnails with their scores and shown on a Leaflet map: numbered markers at their centres,
// their footprints outlined, each tile's image laid over the map inside its footprint (rotated
// or skewed as the footprint is), and a heat map of every gallery tile's score (POST /heatmap)
// underneath, each tile's cell its footprint. Clicking a result zooms to it.
// "Draw area" lets the user drag a rectangle on the map; searches then look only inside it.
"use strict";

const ONLINE_TILES = "https://tile.openstreetmap.org/{z}/{x}/{y}.png";
const ONLINE_PROBE = "https://tile.openstreetmap.org/0/0/0.png";

const map = L.map("map", { zoomControl: true, maxZoom: 21 }).setView([0, 0], 2);
// Panes from bottom to top: heat cells, tile images, footprint outlines (overlayPane), markers.
map.createPane("heat").style.zIndex = 350;
map.createPane("tileImages").style.zIndex = 380;
const heatLayer = L.layerGroup().addTo(map);
const imageLayer = L.layerGroup().addTo(map);
const footprintLayer = L.layerGroup().addTo(map);
const markerLayer = L.layerGroup().addTo(map);
let markers = {};
let lastQuery = null;
let area = null; // the drawn search area (an L.Rectangle), or null

// The page works offline: a plain grid background, replaced by map tiles only if they load.
function useOfflineBackground() {
  document.getElementById("map").classList.add("offline");
  const Grid = L.GridLayer.extend({
    createTile() {
      const cell = document.createElement("div");
      cell.className = "grid-cell";
      return cell;
    },
  });
  return new Grid().addTo(map);
}

function tryOnlineBackground(offline) {
  const probe = new Image();
  const timer = setTimeout(() => { probe.src = ""; }, 3000);
  probe.onload = () => {
    clearTimeout(timer);
    map.removeLayer(offline);
    document.getElementById("map").classList.remove("offline");
    L.tileLayer(ONLINE_TILES, {
      maxZoom: 19,
      attribution: "&copy; OpenStreetMap contributors",
    }).addTo(map);
  };
  probe.onerror = () => clearTimeout(timer);
  probe.src = ONLINE_PROBE;
}

tryOnlineBackground(useOfflineBackground());

function setStatus(text, isError = false) {
  const status = document.getElementById("status");
  status.textContent = text;
  status.classList.toggle("error", isError);
}

function describeError(body, status) {
  if (body && typeof body.detail === "string") return body.detail;
  if (body && Array.isArray(body.detail)) return body.detail.map((d) => d.msg).join("; ");
  return `HTTP ${status}`;
}

// A server shared by a team needs its bearer token: the page asks for it once, on the first
// 401, keeps it for the tab's session, and sends it with every request (tile images included,
// fetched with the header and shown from blob URLs).
let token = sessionStorage.getItem("geoloc-token");

async function authorisedFetch(path, options = {}) {
  for (;;) {
    const sent = token;
    const headers = { ...(options.headers || {}) };
    if (sent) headers.Authorization = `Bearer ${sent}`;
    const response = await fetch(path, { ...options, headers });
    if (response.status !== 401) return response;
    if (token !== sent) continue; // another request got the token meanwhile
    const given = window.prompt("This geoloc server needs its access token:");
    if (!given || !given.trim()) return response;
    token = given.trim();
    sessionStorage.setItem("geoloc-token", token);
  }
}

async function post(path, payload) {
  const response = await authorisedFetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(payload),
  });
  const body = await response.json().catch(() => null);
  if (!response.ok) throw new Error(describeError(body, response.status));
  return body;
}

// A tile image's URL for <img> and the map: the URL itself, or with a token a blob of the image.
async function tileSource(url) {
  if (!token) return url;
  const response = await authorisedFetch(url);
  return response.ok ? URL.createObjectURL(await response.blob()) : url;
}

function highlight(key) {
  document.querySelectorAll(".result").forEach((li) => li.classList.toggle("active", li.dataset.key === key));
  Object.entries(markers).forEach(([k, m]) => {
    const el = m.getElement();
    if (el) el.classList.toggle("active", k === key);
  });
}

function text(tag, className, content) {
  const el = document.createElement(tag);
  el.className = className;
  el.textContent = content;
  return el;
}

function coords(r) {
  return r.lat === null || r.lon === null ? "no coordinates" : `${r.lat.toFixed(5)}, ${r.lon.toFixed(5)}`;
}

// A footprint ring is GeoJSON order, [lon, lat]; Leaflet wants [lat, lon].
function ringLatLngs(ring) {
  return ring.map(([lon, lat]) => [lat, lon]);
}

// The four corners of a tile's image in its footprint ring, in the image's order: top-left,
// top-right, bottom-right, bottom-left, each [lon, lat]; null for a ring of fewer than four
// points. The corners are the ring's four sharpest turns (the extra points along a curved edge
// turn little), measured in Web Mercator, whose angles are those on the ground. A ring runs
// counter-clockwise, which from an image's top-left corner goes down its left side. geoloc
// writes each ring from its image's top-left corner (a ring joined again at the antimeridian
// starts at the corner west of the cut's north end: the top-left one of a tile turned by less
// than 45 degrees); a ring that does not start at a corner gets as top edge the one that runs
// most nearly east.
function imageCorners(ring) {
  const points = ring.slice(0, -1).filter((p, i, all) => i === 0 || p[0] !== all[i - 1][0] || p[1] !== all[i - 1][1]);
  if (points.length < 4) return null;
  const xy = points.map(([lon, lat]) => L.Projection.SphericalMercator.project(L.latLng(lat, lon)));
  const n = points.length;
  const turns = xy.map((p, i) => {
    const a = xy[(i + n - 1) % n], b = xy[(i + 1) % n];
    const ux = p.x - a.x, uy = p.y - a.y, vx = b.x - p.x, vy = b.y - p.y;
    return Math.abs(Math.atan2(ux * vy - uy * vx, ux * vx + uy * vy));
  });
  const corners = [...turns.keys()].sort((i, j) => turns[j] - turns[i]).slice(0, 4).sort((i, j) => i - j);
  const eastward = (k) => {
    const from = xy[corners[k]], to = xy[corners[(k + 3) % 4]];
    return (to.x - from.x) / (Math.hypot(to.x - from.x, to.y - from.y) || 1);
  };
  let first = corners.indexOf(0);
  if (first < 0) first = [0, 1, 2, 3].reduce((best, k) => (eastward(k) > eastward(best) ? k : best), 0);
  return [0, 3, 2, 1].map((step) => points[corners[(first + step) % 4]]);
}

// The CSS transform that lays a side x side image with its corners on the points p0 (top-left),
// p1 (top-right), p2 (bottom-right) and p3 (bottom-left): the projective map of the unit
// square onto a quadrilateral, x = (a u + b v + c) / (g u + h v + 1) and the same for y with
// d, e, f; null for a quadrilateral of no area.
function quadTransform([p0, p1, p2, p3], side) {
  const sx = p0.x - p1.x + p2.x - p3.x, sy = p0.y - p1.y + p2.y - p3.y;
  const dx1 = p1.x - p2.x, dx2 = p3.x - p2.x, dy1 = p1.y - p2.y, dy2 = p3.y - p2.y;
  const den = dx1 * dy2 - dx2 * dy1;
  if (!den) return null;
  const g = (sx * dy2 - sy * dx2) / den, h = (dx1 * sy - dy1 * sx) / den;
  const a = p1.x - p0.x + g * p1.x, b = p3.x - p0.x + h * p3.x;
  const d = p1.y - p0.y + g * p1.y, e = p3.y - p0.y + h * p3.y;
  const m = [a / side, d / side, 0, g / side, b / side, e / side, 0, h / side, 0, 0, 1, 0, p0.x, p0.y, 0, 1];
  return `matrix3d(${m.join(",")})`;
}

// A tile's image drawn inside its footprint: its corners on the footprint's corners, placed
// again after every zoom (hidden during the zoom animation, like Leaflet's own overlays).
const IMAGE_SIDE = 256; // CSS pixels of the untransformed image; the transform scales it
const FootprintImage = L.Layer.extend({
  initialize(corners, options) {
    this._corners = corners.map(([lon, lat]) => L.latLng(lat, lon));
    this._url = "";
    L.setOptions(this, options);
  },
  onAdd() {
    const image = L.DomUtil.create("img", "tile-overlay leaflet-image-layer leaflet-zoom-hide");
    image.alt = this.options.alt || "";
    image.style.width = image.style.height = `${IMAGE_SIDE}px`;
    image.style.transformOrigin = "0 0";
    if (this._url) image.src = this._url;
    this._image = image;
    this.getPane().appendChild(image);
    this._place();
  },
  onRemove() {
    L.DomUtil.remove(this._image);
  },
  getEvents() {
    return { zoomend: this._place, viewreset: this._place };
  },
  setUrl(url) {
    this._url = url;
    if (this._image) this._image.src = url;
    return this;
  },
  _place() {
    const transform = quadTransform(this._corners.map((c) => this._map.latLngToLayerPoint(c)), IMAGE_SIDE);
    this._image.style.transform = transform || "scale(0)";
  },
});

// A marker on its footprint's side of the antimeridian: a centre's longitude is written in
// [-180, 180], and a footprint across 180 runs on past it.
function markerLon(r) {
  if (!r.footprint) return r.lon;
  const lons = r.footprint.map((p) => p[0]);
  const middle = (Math.min(...lons) + Math.max(...lons)) / 2;
  return r.lon + 360 * Math.round((middle - r.lon) / 360);
}

// Score in [0, 1] -> blue (unlikely) through green and yellow to red (likely).
function heatColour(t) {
  return `hsl(${Math.round(240 * (1 - t))}, 90%, 50%)`;
}

function showHeatmap(body) {
  heatLayer.clearLayers();
  const span = body.max - body.min || 1;
  for (const cell of body.cells) {
    const t = (cell.score - body.min) / span;
    const style = {
      pane: "heat",
      className: "heat-cell",
      stroke: false,
      fillColor: heatColour(t),
      fillOpacity: 0.25 + 0.45 * t,
      interactive: false,
    };
    // A cell of one tile is its footprint; a cell of binned centres is a box.
    const shape = cell.footprint
      ? L.polygon(ringLatLngs(cell.footprint), style)
      : L.rectangle([[cell.south, cell.west], [cell.north, cell.east]], style);
    shape.addTo(heatLayer);
  }
}

async function loadHeatmap(query) {
  heatLayer.clearLayers();
  if (!document.getElementById("heat").checked) return;
  try {
    const body = await post("/heatmap", { text: query, cells: 2500 });
    if (query === lastQuery) showHeatmap(body);
  } catch (error) {
    setStatus(`heat map: ${error.message}`, true);
  }
}

function zoomTo(r) {
  if (r.footprint) map.fitBounds(L.latLngBounds(ringLatLngs(r.footprint)), { padding: [24, 24], maxZoom: 21 });
  else map.setView([r.lat, r.lon], Math.max(map.getZoom(), 17));
}

function showResults(results) {
  const list = document.getElementById("results");
  list.replaceChildren();
  markerLayer.clearLayers();
  footprintLayer.clearLayers();
  imageLayer.clearLayers();
  markers = {};
  const points = [];
  for (const r of results) {
    const li = document.createElement("li");
    li.className = "result";
    li.dataset.key = r.key;
    const img = document.createElement("img");
    tileSource(r.tile_url).then((src) => { img.src = src; });
    img.alt = r.key;
    img.loading = "lazy";
    const info = document.createElement("div");
    info.append(text("div", "rank", `#${r.rank}  score ${r.score.toFixed(4)}`));
    if (typeof r.judgement === "number") {
      info.append(text("div", "meta", `judgement ${r.judgement.toFixed(3)} (retrieval rank ${r.retrieval_rank})`));
    }
    info.append(text("div", "meta", r.key));
    info.append(text("div", "meta", coords(r)));
    if (typeof r.explanation === "string") {
      info.append(text("div", "explanation", r.explanation || "(the model gave no answer)"));
    }
    li.append(img, info);
    list.append(li);

    if (r.lat !== null && r.lon !== null) {
      const icon = L.divIcon({ className: "rank-marker", html: String(r.rank), iconSize: [24, 24] });
      const marker = L.marker([r.lat, markerLon(r)], { icon, title: `#${r.rank} ${r.key}` }).addTo(markerLayer);
      const popup = document.createElement("div");
      popup.append(text("b", "", `#${r.rank} ${r.key}`), document.createElement("br"),
        text("span", "", `score ${r.score.toFixed(4)}, ${coords(r)}`));
      marker.bindPopup(popup);
      marker.on("click", () => highlight(r.key));
      markers[r.key] = marker;
      points.push([r.lat, markerLon(r)]);
      if (r.footprint) {
        const ring = ringLatLngs(r.footprint);
        // The tile's own image, inside its footprint, under its outline.
        const corners = imageCorners(r.footprint);
        if (corners) {
          const overlay = new FootprintImage(corners, { pane: "tileImages", alt: r.key }).addTo(imageLayer);
          tileSource(r.tile_url).then((src) => overlay.setUrl(src));
        }
        L.polygon(ring, { className: "footprint", color: "#ff00ff", weight: 3, fill: false })
          .bindTooltip(`#${r.rank}`).addTo(footprintLayer);
        points.push(...ring);
      }
      li.addEventListener("click", () => {
        zoomTo(r);
        marker.openPopup();
        highlight(r.key);
      });
    }
  }
  if (points.length) map.fitBounds(points, { padding: [40, 40], maxZoom: 18 });
}

async function run(kind) {
  const query = document.getElementById("query").value;
  if (!query.trim()) { setStatus("Describe the place first.", true); return; }
  const k = parseInt(document.getElementById("k").value, 10) || 10;
  const rerank = document.getElementById("rerank").checked;
  setStatus(kind === "explain" ? "Asking the model about the top tiles..." : "Searching...");
  try {
    const body = kind === "explain"
      ? await post("/explain", { text: query, top: 5, rerank })
      : await post("/search", areaRequest({ text: query, k, rerank }));
    showResults(body.results);
    lastQuery = query;
    loadHeatmap(query);
    const where = area && kind !== "explain" ? ", inside the drawn area" : "";
    setStatus(`${body.results.length} tiles in ${body.took_ms} ms${where}${body.rerank ? ", re-ranked by the model" : ""}`);
  } catch (error) {
    setStatus(error.message, true);
  }
}

// The drawn rectangle as a GeoJSON geometry for POST /search. Leaflet's longitudes go past
// +-180 when the map is panned across the antimeridian: they are wrapped, and a box that then
// has west > east is split into two polygons, one on each side (RFC 7946, 3.1.9).
function boxRing(west, south, east, north) {
  return [[[west, south], [east, south], [east, north], [west, north], [west, south]]];
}

function areaGeometry(bounds) {
  const south = Math.max(bounds.getSouth(), -90), north = Math.min(bounds.getNorth(), 90);
  if (bounds.getEast() - bounds.getWest() >= 360) return { type: "Polygon", coordinates: boxRing(-180, south, 180, north) };
  const west = L.Util.wrapNum(bounds.getWest(), [-180, 180], true);
  const east = L.Util.wrapNum(bounds.getEast(), [-180, 180], true);
  if (west <= east) return { type: "Polygon", coordinates: boxRing(west, south, east, north) };
  return { type: "MultiPolygon", coordinates: [boxRing(west, south, 180, north), boxRing(-180, south, east, north)] };
}

function areaRequest(payload) {
  return area ? { ...payload, within: areaGeometry(area.getBounds()) } : payload;
}

function clearArea() {
  if (area) map.removeLayer(area);
  area = null;
  document.getElementById("clear-area-button").hidden = true;
}

// Draw mode: the next drag on the map draws the area instead of panning.
function startDrawing() {
  clearArea();
  map.dragging.disable();
  document.getElementById("map").classList.add("drawing");
  let start = null;
  const move = (event) => {
    if (!start) return;
    const bounds = L.latLngBounds(start, event.latlng);
    if (area) area.setBounds(bounds);
    else area = L.rectangle(bounds, { className: "search-area", color: "#0055ff", weight: 2, fillOpacity: 0.08, interactive: false }).addTo(map);
  };
  const down = (event) => { start = event.latlng; };
  const up = () => {
    map.off("mousedown", down).off("mousemove", move).off("mouseup", up);
    map.dragging.enable();
    document.getElementById("map").classList.remove("drawing");
    if (area) {
      document.getElementById("clear-area-button").hidden = false;
      setStatus("Searches now look only inside the drawn area.");
    }
  };
  map.on("mousedown", down).on("mousemove", move).on("mouseup", up);
  setStatus("Drag a rectangle on the map.");
}

document.getElementById("area-button").addEventListener("click", startDrawing);
document.getElementById("clear-area-button").addEventListener("click", clearArea);

document.getElementById("search-form").addEventListener("submit", (event) => {
  event.preventDefault();
  run("search");
});
document.getElementById("explain-button").addEventListener("click", () => run("explain"));
document.getElementById("heat").addEventListener("change", () => {
  if (lastQuery) loadHeatmap(lastQuery);
});

const legend = L.control({ position: "bottomright" });
legend.onAdd = () => {
  const div = L.DomUtil.create("div", "heat-legend");
  div.innerHTML = `heat map: <span style="color:${heatColour(0)}">&#9632;</span> unlikely `
    + `<span style="color:${heatColour(1)}">&#9632;</span> likely`;
  return div;
};
legend.addTo(map);

// Layout v1 JSON <-> editor instances (image px); imports of ComfyUI BOUNDING_BOXES and of
// InstanceAssemble / DenseLayout layout JSON. Pure functions, DOM-free; LayoutState
// (layout_state.js) calls them at its load, serialize and import edges. Unknown keys are
// kept and written back unchanged.

import { copyRect, fitRect, rectFromPoints } from "./layout_geometry.js";
import { LAYOUT_VERSION, LayoutError, checkField } from "./layout_validate.js";

const KNOWN_TOP = new Set(["version", "width", "height", "instances"]);
const KNOWN_INST = new Set(["box", "ref", "caption", "depth", "alpha"]);

/**
 * @typedef {import("./layout_geometry.js").Rect} Rect
 * @typedef {{rect: Rect, ref: any, caption: any, depth: any, alpha: any, extra: Record<string, any>}} Instance
 *   rect in image px; extra holds unknown keys, written back unchanged.
 * @typedef {{width: number, height: number, instances: Instance[], extra: Record<string, any>}} LayoutDoc
 */

/** Deep copy of JSON data. @template T @param {T} v @returns {T} */
export const clone = (v) => (v === undefined ? v : JSON.parse(JSON.stringify(v)));

/** @param {Instance} inst @returns {Instance} */
export const cloneInstance = (inst) => ({ ...clone(inst), rect: copyRect(inst.rect) });

/**
 * Parse a layout v1 object or JSON string; a blank string or null is an empty layout.
 * Throws LayoutError for unparsable JSON, an unknown version or a box that is not four
 * finite numbers; other bad values load as-is so validation can show them.
 * @param {string|object|null|undefined} json
 * @param {{width: number, height: number}} fallback size when the layout has none
 * @returns {LayoutDoc}
 */
export function parseLayout(json, fallback) {
  let obj = json;
  if (typeof json === "string") {
    if (!json.trim()) obj = null;
    else {
      try { obj = JSON.parse(json); } catch (e) {
        throw new LayoutError(`layout is not valid JSON: ${/** @type {Error} */ (e).message}`, null, "layout");
      }
    }
  }
  if (obj === null || obj === undefined) obj = { version: LAYOUT_VERSION, instances: [] };
  if (typeof obj !== "object" || Array.isArray(obj)) throw new LayoutError("layout must be a JSON object", null, "layout");
  if (isInstanceAssemble(obj)) obj = layoutFromInstanceAssemble(obj);
  const o = /** @type {Record<string, any>} */ (obj);
  if (o.version !== LAYOUT_VERSION) {
    throw new LayoutError(`unknown layout version ${JSON.stringify(o.version)}; expected ${LAYOUT_VERSION}`, null, "version");
  }
  const width = Number.isInteger(o.width) && o.width > 0 ? o.width : fallback.width;
  const height = Number.isInteger(o.height) && o.height > 0 ? o.height : fallback.height;
  const list = o.instances ?? [];
  if (!Array.isArray(list)) throw new LayoutError("instances must be a list", null, "instances");
  return { width, height, instances: list.map((raw, i) => parseInstance(raw, i, width, height)),
    extra: unknownKeys(o, KNOWN_TOP) };
}

/** Layout v1 object: normalized boxes, unknown keys kept. @param {LayoutDoc} doc @returns {Record<string, any>} */
export function layoutToJSON({ width, height, instances, extra }) {
  const out = instances.map((inst) => ({
    box: [inst.rect.x0 / width, inst.rect.y0 / height, inst.rect.x1 / width, inst.rect.y1 / height].map(roundNorm),
    ref: inst.ref ?? null,
    caption: inst.caption ?? null,
    depth: inst.depth ?? null,
    alpha: inst.alpha ?? null,
    ...clone(inst.extra),
  }));
  return { version: LAYOUT_VERSION, width, height, instances: out, ...clone(extra) };
}

/**
 * Core ComfyUI BOUNDING_BOXES ([{x, y, width, height, metadata}] in image px, optionally
 * wrapped as {"__value__": [...]}) as instances fitted to `bounds`. A string metadata, or
 * metadata.caption/label/text, becomes the caption; metadata.depth a depth if valid; the
 * metadata itself is kept as an extra key.
 * @param {any} boxes @param {{width: number, height: number}} bounds @returns {Instance[]}
 */
export function instancesFromBoundingBoxes(boxes, bounds) {
  const list = Array.isArray(boxes) ? boxes : boxes?.__value__;
  if (!Array.isArray(list)) throw new LayoutError("BOUNDING_BOXES must be a list", null, "instances");
  return list.map((b, i) => {
    const nums = [b?.x, b?.y, b?.width, b?.height];
    if (!nums.every((v) => typeof v === "number" && Number.isFinite(v))) {
      throw new LayoutError(`bounding box ${i} needs numeric x, y, width, height`, i, "box");
    }
    return /** @type {Instance} */ ({ ...fieldsFromMetadata(b.metadata),
      rect: fitRect({ x0: b.x, y0: b.y, x1: b.x + b.width, y1: b.y + b.height }, bounds) });
  });
}

/**
 * Whether `obj` is an InstanceAssemble / DenseLayout layout: an object with `annos` and no `version`.
 * @param {any} obj
 */
export function isInstanceAssemble(obj) {
  return obj !== null && typeof obj === "object" && !Array.isArray(obj) && !("version" in obj) && "annos" in obj;
}

/**
 * InstanceAssemble / DenseLayout layout JSON -> layout v1 (the same rule as refcomp_core's import):
 * `{"prompt", "width", "height", "annos": [{"bbox": [x1, y1, x2, y2] px, "category_name", "caption"}]}`
 * gives width/height as they are (integers), `prompt` as an extra top-level key, and one instance
 * per anno in order: box = [x1/W, y1/H, x2/W, y2/H] clamped to [0, 1]; caption = category_name,
 * plus ", " + caption when caption is a non-empty string (just the caption when category_name is
 * empty); ref, depth and alpha null. Throws LayoutError naming `annos[i].bbox` etc.
 * @param {Record<string, any>} doc @returns {Record<string, any>}
 */
export function layoutFromInstanceAssemble(doc) {
  const size = (key) => {
    const v = doc[key];
    if (typeof v !== "number" || !Number.isInteger(v) || v < 1) {
      throw new LayoutError(`InstanceAssemble layout: ${key} must be a positive integer (pixels), got ${JSON.stringify(v)}`, null, key);
    }
    return v;
  };
  const width = size("width");
  const height = size("height");
  if (!Array.isArray(doc.annos)) throw new LayoutError("InstanceAssemble layout: annos must be a list of {bbox, category_name, caption}", null, "annos");
  const instances = doc.annos.map((anno, i) => {
    const where = `InstanceAssemble layout: annos[${i}]`;
    if (anno === null || typeof anno !== "object" || Array.isArray(anno)) throw new LayoutError(`${where} must be an object`, i, "annos");
    const b = anno.bbox;
    if (!Array.isArray(b) || b.length !== 4 || !b.every((v) => typeof v === "number" && Number.isFinite(v))) {
      throw new LayoutError(`${where}.bbox must be four finite numbers [x1, y1, x2, y2] in pixels, got ${JSON.stringify(b)}`, i, "bbox");
    }
    if (!(b[2] > b[0]) || !(b[3] > b[1])) {
      throw new LayoutError(`${where}.bbox is empty: need x2 > x1 and y2 > y1, got ${JSON.stringify(b)}`, i, "bbox");
    }
    const name = anno.category_name ?? "";
    if (typeof name !== "string") throw new LayoutError(`${where}.category_name must be a string, got ${JSON.stringify(name)}`, i, "category_name");
    const extra = anno.caption;
    if (extra !== undefined && extra !== null && typeof extra !== "string") {
      throw new LayoutError(`${where}.caption must be a string, got ${JSON.stringify(extra)}`, i, "caption");
    }
    const caption = extra ? (name ? `${name}, ${extra}` : extra) : name;
    const box = [b[0] / width, b[1] / height, b[2] / width, b[3] / height].map((v) => Math.min(1, Math.max(0, v)));
    return { box, ref: null, caption, depth: null, alpha: null };
  });
  const out = { version: LAYOUT_VERSION, width, height, instances };
  if ("prompt" in doc) out.prompt = clone(doc.prompt);
  return out;
}

/**
 * What a pasted or dropped JSON text is: a layout (v1 or InstanceAssemble, replaces the layout)
 * or ComfyUI BOUNDING_BOXES (adds boxes). Throws LayoutError for anything else.
 * @param {string} text @returns {{kind: "layout"|"instanceassemble"|"bounding_boxes", data: any}}
 */
export function readImport(text) {
  let data;
  try { data = JSON.parse(text); } catch (e) {
    throw new LayoutError(`cannot import: not JSON (${/** @type {Error} */ (e).message}); paste a layout v1, an `
      + "InstanceAssemble layout or ComfyUI BOUNDING_BOXES", null, "layout");
  }
  if (Array.isArray(data) || Array.isArray(data?.__value__)) return { kind: "bounding_boxes", data };
  if (isInstanceAssemble(data)) return { kind: "instanceassemble", data };
  if (data && typeof data === "object" && "version" in data) return { kind: "layout", data };
  throw new LayoutError("cannot import: expected a layout v1 ({version: 1, instances}), an InstanceAssemble layout "
    + "({width, height, annos}) or ComfyUI BOUNDING_BOXES ([{x, y, width, height}])", null, "layout");
}

/**
 * Round a normalized coordinate to 12 decimals: removes px→norm float noise
 * (0.9499999999999998 → 0.95) so a load/save round trip is exact; the change is
 * below 1e-8 px for any image size.
 * @param {number} v
 */
function roundNorm(v) {
  return Math.round(v * 1e12) / 1e12;
}

/** @param {Record<string, any>} o @param {Set<string>} known @returns {Record<string, any>} */
function unknownKeys(o, known) {
  return Object.fromEntries(Object.entries(o).filter(([k]) => !known.has(k)).map(([k, v]) => [k, clone(v)]));
}

/** @param {any} raw @param {number} i @param {number} width @param {number} height @returns {Instance} */
function parseInstance(raw, i, width, height) {
  if (raw === null || typeof raw !== "object" || Array.isArray(raw)) {
    throw new LayoutError(`instance ${i} must be a JSON object`, i, "instance");
  }
  const box = raw.box;
  if (!Array.isArray(box) || box.length !== 4 || !box.every((v) => typeof v === "number" && Number.isFinite(v))) {
    throw new LayoutError(`instance ${i}, box: must be four finite numbers [x0, y0, x1, y1]`, i, "box");
  }
  const rect = rectFromPoints({ x: box[0] * width, y: box[1] * height }, { x: box[2] * width, y: box[3] * height });
  return { rect, ref: raw.ref ?? null, caption: raw.caption ?? null, depth: raw.depth ?? null, alpha: raw.alpha ?? null,
    extra: unknownKeys(raw, KNOWN_INST) };
}

/** @param {any} meta @returns {Omit<Instance, "rect">} */
function fieldsFromMetadata(meta) {
  const out = { ref: null, caption: "", depth: null, alpha: null, extra: /** @type {Record<string, any>} */ ({}) };
  if (typeof meta === "string") out.caption = meta;
  else if (meta && typeof meta === "object") {
    const text = meta.caption ?? meta.label ?? meta.text;
    if (typeof text === "string") out.caption = text;
    if (checkField("depth", meta.depth) === null && meta.depth != null) out.depth = meta.depth;
    out.extra.metadata = clone(meta);
  } else if (meta !== undefined && meta !== null) out.extra.metadata = clone(meta);
  return out;
}

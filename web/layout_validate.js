// Layout v1 validation, mirroring refcomp_core's rules so the canvas can show
// problems before Python rejects them. Python stays the authority. DOM-free.

import { TOKEN_PX } from "./layout_geometry.js";

export const LAYOUT_VERSION = 1;
export const DEPTHS = Object.freeze(["fg", "mg", "bg"]);
export const DEFAULT_MAX_INSTANCES = 50;
/** Slack (px) on the one-token minimum, for float noise in normalized boxes. */
export const SIZE_EPS_PX = 1e-6;

/**
 * @typedef {{index: number|null, field: string, message: string}} LayoutIssue
 *   index is null for a problem with the whole layout.
 * @typedef {{maxInstances?: number, refCount?: number|null}} ValidateOptions
 *   refCount: how many references exist; null/undefined skips the range check.
 */

/** A bad layout or field value. `index` and `field` say where. */
export class LayoutError extends Error {
  /** @param {string} message @param {number|null} [index] @param {string} [field] */
  constructor(message, index = null, field = "") {
    super(message);
    this.name = "LayoutError";
    this.index = index;
    this.field = field;
  }
}

/** @param {unknown} v @returns {v is number} */
const isNum = (v) => typeof v === "number" && Number.isFinite(v);

/**
 * Problem with one value of a per-instance field, or null if it is fine.
 * Shared by validateLayout and LayoutState's setters.
 * @param {string} field "ref" | "caption" | "depth" | "alpha"
 * @param {unknown} value @param {ValidateOptions} [opts] @returns {string|null}
 */
export function checkField(field, value, opts = {}) {
  switch (field) {
    case "ref":
      if (value === null || value === undefined) return null;
      if (!Number.isInteger(value) || /** @type {number} */ (value) < 0) {
        return `ref must be a non-negative integer or null, got ${JSON.stringify(value)}`;
      }
      if (opts.refCount != null && /** @type {number} */ (value) >= opts.refCount) {
        return `ref ${value} is out of range: there are ${opts.refCount} references (0..${opts.refCount - 1})`;
      }
      return null;
    case "caption":
      if (value === null || value === undefined || typeof value === "string") return null;
      return "caption must be a string or null";
    case "depth":
      if (value === null || value === undefined || DEPTHS.includes(/** @type {string} */ (value))) return null;
      return `depth must be one of ${DEPTHS.join(", ")} or null, got ${JSON.stringify(value)}`;
    case "alpha":
      if (value === null || value === undefined) return null;
      if (!isNum(value) || value < 0 || value > 1) {
        return `alpha must be a number in [0, 1] or null, got ${JSON.stringify(value)}`;
      }
      return null;
    default:
      return `unknown field ${field}`;
  }
}

/**
 * Problems with a normalized box, or [] if fine.
 * @param {unknown} box @param {number} width @param {number} height @returns {string[]}
 */
export function checkBox(box, width, height) {
  if (!Array.isArray(box) || box.length !== 4) return ["box must be a list [x0, y0, x1, y1]"];
  if (!box.every(isNum)) return ["box values must be finite numbers (no NaN)"];
  if (!box.every((v) => v >= 0 && v <= 1)) return [`box values must be in [0, 1], got ${JSON.stringify(box)}`];
  const [x0, y0, x1, y1] = box;
  if (!(x0 < x1 && y0 < y1)) return ["box is empty: need x0 < x1 and y0 < y1"];
  const out = [];
  if ((x1 - x0) * width < TOKEN_PX - SIZE_EPS_PX) out.push(`box is narrower than one token (${TOKEN_PX} px)`);
  if ((y1 - y0) * height < TOKEN_PX - SIZE_EPS_PX) out.push(`box is shorter than one token (${TOKEN_PX} px)`);
  return out;
}

/**
 * Every problem with a parsed layout v1 object. Unknown keys are ignored.
 * @param {any} layout @param {ValidateOptions} [opts] @returns {LayoutIssue[]}
 */
export function validateLayout(layout, opts = {}) {
  const max = opts.maxInstances ?? DEFAULT_MAX_INSTANCES;
  /** @type {LayoutIssue[]} */
  const issues = [];
  const top = (field, message) => issues.push({ index: null, field, message });
  if (layout === null || typeof layout !== "object" || Array.isArray(layout)) {
    top("layout", "layout must be a JSON object");
    return issues;
  }
  if (layout.version !== LAYOUT_VERSION) {
    top("version", `unknown layout version ${JSON.stringify(layout.version)}; expected ${LAYOUT_VERSION}`);
    return issues;
  }
  for (const f of ["width", "height"]) {
    if (!Number.isInteger(layout[f]) || layout[f] < 1) top(f, `${f} must be a positive integer`);
  }
  if (!Array.isArray(layout.instances)) {
    top("instances", "instances must be a list");
    return issues;
  }
  if (layout.instances.length > max) {
    top("instances", `${layout.instances.length} instances is more than the maximum of ${max}`);
  }
  const w = Number.isInteger(layout.width) ? layout.width : 1;
  const h = Number.isInteger(layout.height) ? layout.height : 1;
  layout.instances.forEach((inst, index) => {
    if (inst === null || typeof inst !== "object" || Array.isArray(inst)) {
      issues.push({ index, field: "instance", message: "instance must be a JSON object" });
      return;
    }
    for (const message of checkBox(inst.box, w, h)) issues.push({ index, field: "box", message });
    for (const field of ["ref", "caption", "depth", "alpha"]) {
      const message = checkField(field, inst[field], opts);
      if (message) issues.push({ index, field, message });
    }
  });
  return issues;
}

/** One line per issue, e.g. "instance 3, box: box is empty…". @param {LayoutIssue[]} issues */
export function formatIssues(issues) {
  return issues.map((i) => `${i.index === null ? "layout" : `instance ${i.index}`}, ${i.field}: ${i.message}`);
}

// Where a Layout Canvas node's references come from, in ComfyUI: how many there are (for the
// ref check) and their thumbnails (for the boxes), following the node's inputs.
//
// - references connected to Load Reference Set with a folder and no IMAGE batch: the pack's
//   route lists that input subfolder, in reference-set order, with thumbnail URLs;
// - after the canvas node ran with references connected: its UI output holds a thumbnail of
//   every reference of the set (batch images too) and wins while the source is unchanged;
// - no references connected: num_refs (0 = unknown), no thumbnails.

/** @typedef {{url: string|null, name?: string|null}} RefSource */

export const UI_KEY = "refcomp_references";
const LOADER = "RefCompLoadReferenceSet";

/** @param {any} node @param {string} name */
export const findWidget = (node, name) => node.widgets?.find((/** @type {any} */ w) => w.name === name);

/** The node feeding input `name` of `node`, or null. @param {any} node @param {string} name */
export function upstream(node, name) {
  const input = node.inputs?.find((/** @type {any} */ i) => i.name === name);
  if (input?.link == null) return null;
  const graph = node.graph;
  const link = graph?.getLink?.(input.link) ?? graph?.links?.get?.(input.link) ?? graph?.links?.[input.link];
  return link ? graph.getNodeById(link.origin_id) ?? null : null;
}

/**
 * What feeds `references`: null (nothing), {folder, batch} for Load Reference Set, {other} otherwise.
 * The `key` names the source, so a change can be noticed cheaply.
 * @param {any} node @returns {{key: string, folder: string, batch: boolean}|null}
 */
export function referenceSource(node) {
  const origin = upstream(node, "references");
  if (!origin) return null;
  if (origin.type !== LOADER) return { key: `node:${origin.id}`, folder: "", batch: true };
  const folder = String(findWidget(origin, "folder")?.value ?? "").trim();
  const batch = origin.inputs?.some((/** @type {any} */ i) => i.name === "images" && i.link != null) ?? false;
  return { key: `${origin.id}:${folder}:${batch}`, folder, batch };
}

export class ReferenceTracker {
  /**
   * @param {any} node the Layout Canvas node
   * @param {{setRefCount: (n: number|null) => void}} state
   * @param {{set: (s: RefSource[], origin?: string) => void, same: (s: RefSource[]) => boolean}} images
   * @param {{fetchApi: (route: string) => Promise<Response>, apiURL: (route: string) => string}} api
   * @param {(message: string) => void} [warn] shown to the user (e.g. a missing folder)
   */
  constructor(node, state, images, api, warn) {
    Object.assign(this, { node, state, images, api, warn });
    /** @type {string|null} */ this._key = null;
    /** @type {{key: string, sources: RefSource[]}|null} */ this._executed = null;
    /** @type {number|null} */ this._listed = null;
    this._fetching = 0;
  }

  /** num_refs widget value, 0 = unknown. */
  _numRefs() {
    const w = findWidget(this.node, "num_refs") ?? findWidget(this.node, "ref_count");
    return Number.isInteger(w?.value) && w.value > 0 ? w.value : null;
  }

  /** Re-read the node's inputs; cheap when nothing changed (call it every frame). */
  update() {
    const src = referenceSource(this.node);
    const key = src?.key ?? "none";
    if (key !== this._key) {
      this._key = key;
      this._listed = null;
      if (this._executed && this._executed.key !== key) this._executed = null;
      if (this._executed) this._show(this._executed.sources, "the last run");
      else {
        this._show([], ""); // never the previous source's images
        if (src?.folder && !src.batch) this._list(src.folder, key);
      }
    }
    const count = !src ? this._numRefs()
      : this._executed ? this._executed.sources.length : this._listed;
    this.state.setRefCount(count);
  }

  /** The node ran: its UI output lists a thumbnail per reference. @param {any} output */
  executed(output) {
    const list = output?.[UI_KEY];
    if (!Array.isArray(list)) return;
    const sources = list.map((/** @type {any} */ r, /** @type {number} */ i) => ({
      url: this.api.apiURL(`/view?${new URLSearchParams({ filename: r.filename, subfolder: r.subfolder ?? "", type: r.type ?? "temp" })}`),
      name: `ref ${i}`,
    }));
    this._key = referenceSource(this.node)?.key ?? "none";
    this._executed = { key: this._key, sources };
    this._show(sources, "the last run");
    this.update();
  }

  /** @param {RefSource[]} sources @param {string} origin */
  _show(sources, origin) {
    if (!this.images.same(sources)) this.images.set(sources, origin);
  }

  /** @param {string} folder @param {string} key */
  async _list(folder, key) {
    const ticket = ++this._fetching;
    try {
      const res = await this.api.fetchApi(`/refcomp/references?${new URLSearchParams({ folder })}`);
      const body = await res.json();
      if (ticket !== this._fetching || key !== this._key) return;
      if (!res.ok) throw new Error(body?.error ?? `HTTP ${res.status}`);
      this._listed = body.names.length;
      this._show(body.urls.map((/** @type {string} */ u, /** @type {number} */ i) => ({ url: this.api.apiURL(u), name: body.names[i] })),
        `input/${folder}`);
    } catch (e) {
      if (ticket !== this._fetching) return;
      this._listed = null;
      this._show([], "");
      this.warn?.(`References: ${/** @type {Error} */ (e).message}`);
    }
    this.update();
  }
}

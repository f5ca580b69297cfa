// The reference images the canvas shows in boxes, by reference index. Needs a DOM (Image)
// but not ComfyUI: the glue fills it from the pack's thumbnail route or the node's preview.

/** @typedef {{url: string|null, name?: string|null}} RefSource */

export class RefImages {
  /** @param {Document} [doc] */
  constructor(doc = globalThis.document) {
    this.doc = doc;
    /** @type {{url: string|null, name: string|null, img: HTMLImageElement|null}[]} */
    this.items = [];
    /** Where the list came from (shown in tooltips), e.g. "input/refcomp_shelf". */
    this.origin = "";
    /** @type {Set<() => void>} */
    this._listeners = new Set();
  }

  /** @param {() => void} fn @returns {() => void} unsubscribe */
  subscribe(fn) {
    this._listeners.add(fn);
    return () => this._listeners.delete(fn);
  }

  _emit() {
    for (const fn of [...this._listeners]) fn();
  }

  /** Number of known references (0 when unknown). */
  get count() {
    return this.items.length;
  }

  /**
   * Replace the list; images whose URL did not change are kept (no reload, no flicker).
   * @param {RefSource[]} sources @param {string} [origin]
   */
  set(sources, origin = "") {
    const old = new Map(this.items.map((it) => [it.url, it]));
    this.items = sources.map(({ url, name = null }) => {
      const kept = url ? old.get(url) : undefined;
      return kept ? { ...kept, name } : { url, name, img: url ? this._load(url) : null };
    });
    this.origin = origin;
    this._emit();
  }

  /** Same sources as now? @param {RefSource[]} sources */
  same(sources) {
    return sources.length === this.items.length && sources.every((s, i) => s.url === this.items[i].url);
  }

  /** @param {string} url */
  _load(url) {
    const img = new (this.doc.defaultView ?? globalThis).Image();
    img.decoding = "async";
    img.onload = () => this._emit();
    img.onerror = () => console.warn(`[RefComp] cannot load reference thumbnail ${url}`);
    img.src = url;
    return img;
  }

  /** The loaded image of reference `i`, or null. @param {number|null|undefined} i */
  get(i) {
    const img = i == null ? null : this.items[i]?.img;
    return img?.complete && img.naturalWidth ? img : null;
  }

  /** File name of reference `i`, or null. @param {number|null|undefined} i */
  name(i) {
    return i == null ? null : this.items[i]?.name ?? null;
  }
}

// Soft checks for a scenario: every check runs and is reported, then `done()` throws if any failed.
import assert from "node:assert/strict";

export class Checks {
  constructor() {
    /** @type {{name: string, ok: boolean, detail: any}[]} */
    this.list = [];
  }

  /** @param {string} name @param {boolean} ok @param {any} [detail] */
  check(name, ok, detail = null) {
    this.list.push({ name, ok: Boolean(ok), detail });
    return Boolean(ok);
  }

  /** Throws an AssertionError naming every failed check. @returns {Record<string, any>} */
  done(extra = {}) {
    const failed = this.list.filter((c) => !c.ok);
    assert.ok(failed.length === 0, `failed checks:\n${failed.map((c) => `- ${c.name}: ${JSON.stringify(c.detail)}`).join("\n")}`);
    return { checks: this.list.map((c) => c.name), ...extra };
  }
}

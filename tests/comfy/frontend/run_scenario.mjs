// Runs one frontend scenario (scn_<name>.mjs next to this file) against a running ComfyUI and
// prints one line `RESULT {"ok": bool, "error": str|null, "details": {...}, "errors": [...]}`.
//
//   node tests/comfy/frontend/run_scenario.mjs http://127.0.0.1:PORT NAME '{"refs": ...}'
//
// A scenario exports `default async (page, ctx) => details`; it throws (node:assert) on failure.
// ctx = {base, ...the JSON of the third argument (what the pytest side prepared)}.

import { openComfy } from "./lib.mjs";

const [base, name, extra] = process.argv.slice(2);
const result = { ok: false, error: null, details: null, errors: [] };
let browser = null;
try {
  const scenario = (await import(`./scn_${name}.mjs`)).default;
  const opened = await openComfy(base);
  browser = opened.browser;
  result.details = await scenario(opened.page, { base, ...(extra ? JSON.parse(extra) : {}) });
  result.errors = opened.errors;
  result.ok = opened.errors.length === 0;
  if (!result.ok) result.error = `page errors: ${opened.errors.join(" | ")}`;
} catch (e) {
  result.error = String(/** @type {any} */ (e)?.stack ?? e);
} finally {
  await browser?.close();
  console.log("RESULT " + JSON.stringify(result));
}

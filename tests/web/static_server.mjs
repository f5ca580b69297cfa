// Tiny static HTTP server for the browser test (no dependencies).
// Serves `/web/*` from the repo's web/ folder and everything else from tests/web/fixtures/;
// `/api/view` (ComfyUI's image route) answers with one small red PNG.

import { createServer } from "node:http";
import { readFile } from "node:fs/promises";
import { extname, join, normalize, sep } from "node:path";
import { fileURLToPath } from "node:url";

const REPO = fileURLToPath(new URL("../../", import.meta.url));
const ROOTS = { web: join(REPO, "web"), fixtures: join(REPO, "tests", "web", "fixtures") };
const TYPES = { ".js": "text/javascript", ".mjs": "text/javascript", ".html": "text/html", ".css": "text/css",
  ".json": "application/json", ".png": "image/png" };

const RED_PNG = "iVBORw0KGgoAAAANSUhEUgAAAAQAAAAGCAIAAABrW6giAAAAFElEQVR4nGM8ISfHAANMDEiAHA4AT/wBEFJ55UUAAAAASUVORK5CYII=";

/** Map a URL path to a file inside one of ROOTS, or null. @param {string} urlPath */
function resolvePath(urlPath) {
  const path = decodeURIComponent(urlPath.split("?")[0]);
  const [root, rel] = path.startsWith("/web/") ? [ROOTS.web, path.slice(5)] : [ROOTS.fixtures, path.slice(1)];
  const file = normalize(join(root, rel));
  return file.startsWith(root + sep) ? file : null;
}

/**
 * Start the server on 127.0.0.1 with a free port.
 * @returns {Promise<{url: string, close: () => Promise<void>}>}
 */
export async function startStaticServer() {
  const server = createServer(async (req, res) => {
    if ((req.url ?? "").startsWith("/api/view?")) {
      res.writeHead(200, { "content-type": "image/png", "cache-control": "no-store" });
      res.end(Buffer.from(RED_PNG, "base64"));
      return;
    }
    const file = resolvePath(req.url ?? "/");
    try {
      if (!file) throw new Error("outside roots");
      const body = await readFile(file);
      res.writeHead(200, { "content-type": TYPES[extname(file)] ?? "application/octet-stream", "cache-control": "no-store" });
      res.end(body);
    } catch {
      res.writeHead(404, { "content-type": "text/plain" });
      res.end("not found");
    }
  });
  await new Promise((ok) => server.listen(0, "127.0.0.1", () => ok(undefined)));
  const { port } = /** @type {import("node:net").AddressInfo} */ (server.address());
  return {
    url: `http://127.0.0.1:${port}`,
    close: () => new Promise((ok) => { server.closeAllConnections?.(); server.close(() => ok()); }),
  };
}

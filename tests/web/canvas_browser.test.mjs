// node's default test-file patterns do not match test_*.mjs, so this file makes
// `node --test tests/web/` run the browser test too.
import "./test_canvas_browser.mjs";

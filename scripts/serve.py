#!/usr/bin/env python3
"""Serves a folder on 127.0.0.1 as a static host would, with the two headers that make the
page cross-origin isolated (COOP `same-origin`, COEP `require-corp`): then the page's
workers may share memory, and the CPU engine loads its threaded module (www/pkg-threads).
`--no-isolation` leaves those out, as a plain static host does: the page then runs the CPU
engine on one thread and says so. Every response carries the page's Content-Security-Policy
(connections to this origin only), so that it covers the workers too (a page's <meta> CSP
does not reach a worker fetched from a URL); `--no-csp` leaves it out (a page of another
project, like the npm test's consumer page with its inline import map).

    python3 scripts/serve.py --directory www [--no-isolation] [--no-csp] PORT
"""

import argparse
import functools
import http.server
import pathlib
import re
import sys


# The page's own policy, read from its <meta> in www/index.html (one place to change it):
# scripts, workers (the thread pool's are blob: URLs of this origin's script) and connections
# from this origin only; WebAssembly compiled.
INDEX = pathlib.Path(__file__).resolve().parent.parent / "www" / "index.html"


def page_policy():
    m = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', INDEX.read_text())
    if not m:
        sys.exit(f"{INDEX} has no Content-Security-Policy <meta>")
    return m.group(1)


class Handler(http.server.SimpleHTTPRequestHandler):
    isolate = True
    csp = True
    policy = ""

    def end_headers(self):
        if self.csp:
            self.send_header("Content-Security-Policy", self.policy)
        if self.isolate:
            self.send_header("Cross-Origin-Opener-Policy", "same-origin")
            self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        super().end_headers()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--directory", required=True)
    ap.add_argument("--bind", default="127.0.0.1")
    ap.add_argument("--no-isolation", action="store_true")
    ap.add_argument("--no-csp", action="store_true")
    ap.add_argument("port", type=int)
    args = ap.parse_args()
    Handler.isolate = not args.no_isolation
    Handler.csp = not args.no_csp
    if Handler.csp:
        Handler.policy = page_policy()
    Handler.extensions_map = {**Handler.extensions_map, ".wasm": "application/wasm",
                              ".js": "text/javascript", ".mjs": "text/javascript"}
    handler = functools.partial(Handler, directory=args.directory)
    with http.server.ThreadingHTTPServer((args.bind, args.port), handler) as httpd:
        httpd.serve_forever()


if __name__ == "__main__":
    main()

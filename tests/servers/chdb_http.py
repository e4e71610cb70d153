"""The current ClickHouse engine (chdb-core, from PyPI) behind the HTTP
interface's request shape, for the sink tests: one persistent chdb session
on a data directory, served on 127.0.0.1:<port>.

It translates requests and nothing else; the engine does the work, dedup
included:
- GET /ping answers "Ok.", as ClickHouse does;
- POST / runs the `query` URL parameter followed by the body (an INSERT's
  data), or the body alone; the output is TabSeparated unless the query
  names a FORMAT;
- every other URL parameter (`insert_deduplication_token`, ...) is a setting
  for that one request, set before it and restored after it;
- credentials (basic auth, `user`/`password` parameters) are accepted and
  not checked: the engine has a single default user;
- a failure answers HTTP 500 with the engine's `Code: N. DB::Exception: ...`
  text and the code in `X-ClickHouse-Exception-Code`.

Usage: chdb_http.py PORT DATA_DIR
"""

import http.server
import re
import sys
import threading
import urllib.parse

from chdb import session

# Parameters of the HTTP interface that are not settings.
NOT_SETTINGS = {"query", "database", "user", "password", "default_format", "query_id"}
SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
EXCEPTION_CODE = re.compile(r"Code: (\d+)")


def quoted(value):
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class Engine:
    """One chdb session; requests run one at a time, as the session wants."""

    def __init__(self, path):
        self.session = session.Session(path)
        self.lock = threading.Lock()

    def run(self, sql, settings):
        with self.lock:
            for name, value in settings.items():
                self.session.query(f"SET {name} = {quoted(value)}")
            try:
                return self.session.query(sql, "TabSeparated")
            finally:
                for name in settings:
                    self.session.query(f"SET {name} = DEFAULT")


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    engine = None

    def do_GET(self):
        if urllib.parse.urlsplit(self.path).path == "/ping":
            self.answer(200, b"Ok.\n")
        else:
            self.answer(404, b"Code: 0. DB::Exception: only /ping and POST / are served\n")

    def do_POST(self):
        params = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query, keep_blank_values=True)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode("utf-8")
        query = params.get("query", [""])[-1]
        sql = f"{query}\n{body}" if query else body
        settings = {name: values[-1] for name, values in params.items() if name not in NOT_SETTINGS}
        bad = [name for name in settings if not SETTING_NAME.match(name)]
        if bad:
            self.answer(500, f"Code: 115. DB::Exception: Unknown setting {bad[0]}\n".encode())
            return
        try:
            result = self.engine.run(sql, settings)
        except Exception as error:  # the engine's exception text is the answer
            text = str(error)
            code = EXCEPTION_CODE.search(text)
            headers = {"X-ClickHouse-Exception-Code": code.group(1)} if code else {}
            self.answer(500, (text + "\n").encode(), headers)
            return
        self.answer(200, result.bytes() if hasattr(result, "bytes") else str(result).encode())

    def answer(self, status, payload, headers=None):
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=UTF-8")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format, *args):
        sys.stderr.write("%s\n" % (format % args))


def main():
    port, path = int(sys.argv[1]), sys.argv[2]
    Handler.engine = Engine(path)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print(f"chdb {Handler.engine.session.query('SELECT version()', 'TabSeparated')}".strip(), file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()

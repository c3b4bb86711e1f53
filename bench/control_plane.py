#!/usr/bin/env python3
"""Control plane at scale: backhaul-operator on the local control plane
(tests/cluster, kwok fake nodes) with N ModelDeployments of three regions.

    python3 bench/control_plane.py 1,100,1000

For each N, in its own namespace `bench-cp-N`, with an operator of its own
(--watch-namespace) publishing to a local signed-route receiver (a Python
server here that verifies every Ed25519 signature and orders writes by their
sequence numbers as docs/publication.md says, and answers its lease renewal
and fleet view too, so an operator that renews one lease per interval and
one that PUTs every route as its heartbeat are measured by the same script;
the operator signs with a key made for the run, BACKHAUL_PUBLISH_KEY_FILE /
BACKHAUL_PUBLISH_KEY_ID):

- apply_to_published_s: from `kubectl create` of the N objects until every
  object has Published=True (and until the receiver holds all 3N routes);
- reconcile duration p50/p99, from the operator's own histogram
  (backhaul_operator_reconcile_duration_seconds, interpolated in buckets);
- operator VmRSS/VmHWM once all are Published;
- a steady window (CONTROL_PLANE_STEADY_S, 120 s: three heartbeat or lease
  intervals at ttl 120): the operator's own API requests over it
  (backhaul_operator_kube_requests_total, by method; target: no write), and
  every admin request it sent the receiver, by kind (route PUT, DELETE and
  GET, lease PUT, fleet GET) and status, as requests per minute (issue 15's
  target: at most 10 at 1,000 objects × 3 regions), its CPU time and memory;
- apply → Published of one new object while the N are settled: 20 probes
  (CONTROL_PLANE_PROBES) created one at a time, 3 s apart
  (CONTROL_PLANE_PROBE_GAP_S), each timed from starting `kubectl create` to
  the watch event that shows its Published condition True, with the
  receiver's first PUT of its routes; p50/p99 (target p99 ≤ 5 s at 1,000);
  then deleted again (the operator withdraws them);
- a forced no-op resync: the operator is restarted (it reconciles every
  object again) and we count (a) objects whose resourceVersion changed, (b)
  the restarted operator's own API requests by method, (c) API write
  requests (POST/PUT/PATCH/APPLY/DELETE) the API server counted on the
  resources the operator touches, next to an equally long idle window; the
  control plane is shared, so (c) can include others' requests.

Then, once: a region failure leaving the Worker's table, with the Worker
itself under `wrangler dev` (its BACKHAUL_PUBLISHERS holding the run's public
key, ALLOW_ANONYMOUS on): one ModelDeployment with ttlSeconds 10, the
operator killed (SIGKILL: its heartbeat stops), and the time until
GET /admin/v1/routes marks the route expired.

Extra kwok nodes (one per region, room for 1,100 pods each) are added for
the run and removed after it. Prints one JSON document on stdout.
BACKHAUL_OPERATOR_BIN names the operator binary (default: the workspace's dev
build) and BACKHAUL_OPERATOR_COMMIT, if set, the commit it was built from
(recorded in the output; issue 15's before/after runs set both).
"""

import atexit
import base64
import hashlib
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.environ.get("BACKHAUL_CACHE", os.path.expanduser("~/.cache/backhaul"))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(CACHE, "target"))
OPERATOR = os.environ.get("BACKHAUL_OPERATOR_BIN", os.path.join(TARGET, "debug", "backhaul-operator"))
# The run's publisher key (docs/publication.md): the operator reads the PEM
# from a file, the receiver and the Worker hold the public key.
KEY_ID = "bench-control-plane"
PRIVATE_KEY = Ed25519PrivateKey.generate()
PUBLIC_KEY = PRIVATE_KEY.public_key()
PUBLIC_KEY_B64 = base64.b64encode(PUBLIC_KEY.public_bytes(serialization.Encoding.Raw,
                                                          serialization.PublicFormat.Raw)).decode()
STATE_DIR = tempfile.mkdtemp(prefix="backhaul-cp-")
atexit.register(shutil.rmtree, STATE_DIR, ignore_errors=True)
KEY_FILE = os.path.join(STATE_DIR, "publish-key.pem")
with open(os.open(KEY_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
    f.write(PRIVATE_KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
# The Worker's BACKHAUL_PUBLISHERS: that key, allowed every namespace and region.
PUBLISHERS = json.dumps([{"id": KEY_ID, "publicKey": PUBLIC_KEY_B64, "group": "bench",
                          "namespaces": ["*"], "regions": ["*"]}], separators=(",", ":"))
REGIONS = {"us-east": (39.04, -77.49), "eu-west": (53.35, -6.26), "ap-south": (19.08, 72.88)}
# Route TTL of the scale runs: the operator re-PUTs each route every TTL/3,
# reconciling its object with nothing to change (the steady window sees it).
TTL_S = 120
# Three lease intervals (ttl/3 each) and as many heartbeat rounds: the rate
# per minute over it is a whole number of intervals, whichever kind runs.
STEADY_WINDOW_S = int(os.environ.get("CONTROL_PLANE_STEADY_S", "120"))
# apply → Published of one object while the others are settled: this many,
# one at a time, this many seconds apart.
PROBES = int(os.environ.get("CONTROL_PLANE_PROBES", "20"))
PROBE_GAP_S = float(os.environ.get("CONTROL_PLANE_PROBE_GAP_S", "3"))
PROBE_LABEL = "backhaul.dev/bench-probe"
WRITE_VERBS = {"POST", "PUT", "PATCH", "APPLY", "DELETE", "DELETECOLLECTION"}
TOUCHED = {"modeldeployments", "deployments", "services", "poddisruptionbudgets", "events", "secrets"}


def log(*a):
    print("[control-plane]", *a, file=sys.stderr, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def kubectl(*args, input=None, check=True):
    r = subprocess.run(["kubectl", *args], input=input, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args[:3])}: {r.stderr.strip()}")
    return r.stdout


def http_get(url, timeout=10):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def signed_bytes(key_id, ts, method, path, body):
    """What an admin request's signature covers (docs/publication.md)."""
    return f"backhaul-v2.{key_id}.{ts}.{method}.{path}.".encode() + body


def sign(ts, method, path, body=b""):
    """The X-Backhaul-Signature value for a request signed with the run's key."""
    return "ed25519=" + base64.b64encode(PRIVATE_KEY.sign(signed_bytes(KEY_ID, ts, method, path, body))).decode()


def signed_headers(method, path, body=b""):
    ts = str(int(time.time()))
    return {"x-backhaul-key-id": KEY_ID, "x-backhaul-timestamp": ts, "x-backhaul-signature": sign(ts, method, path, body)}


def verify(headers, method, path, body):
    """True when the request is signed by the run's key within 300 s."""
    ts = headers.get("x-backhaul-timestamp", "")
    sig = headers.get("x-backhaul-signature", "")
    if headers.get("x-backhaul-key-id") != KEY_ID or not ts.isdigit() or abs(time.time() - int(ts)) > 300:
        return False
    if not sig.startswith("ed25519="):
        return False
    try:
        raw = base64.b64decode(sig[len("ed25519="):], validate=True)
        PUBLIC_KEY.verify(raw, signed_bytes(KEY_ID, ts, method, path, body))
    except (ValueError, InvalidSignature):
        return False
    return True


def error(code, message):
    return json.dumps({"error": {"message": message, "type": "invalid_request_error", "code": code, "param": None}}).encode()


ROUTES_PATH = "/admin/v1/routes"
LEASES_PREFIX = "/admin/v1/leases/"
FLEET_PATH = "/admin/v1/fleet"
# What the receiver counts, one name per kind of admin request.
REQUEST_KINDS = ("route_put", "route_delete", "route_get", "route_list", "lease_put", "fleet_get", "other")


def rfc3339(t):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"


def routes_digest(pairs):
    """(count, digest) of routes held, as docs/publication.md's lease defines it:
    lower-case hex SHA-256 of the lines "{namespace}/{name}/{region} {sequence}\\n",
    sorted bytewise."""
    lines = sorted(f"{key} {sequence}\n".encode() for key, sequence in pairs)
    return len(lines), hashlib.sha256(b"".join(lines)).hexdigest()


class Receiver:
    """The Worker's admin API, reduced to what an operator calls
    (docs/publication.md), every request counted by kind and status:

    - signed PUT/DELETE of a route, the single-route GET (after a 409) and
      the table GET; a bad signature is 401, a route without its sequence or
      upstreamToken 400, a write whose sequence is not above the stored
      route's or tombstone's 409 stale_sequence;
    - the lease, `PUT /admin/v1/leases/{keyId}`: the path's key must be the
      signer (else 403 out_of_scope), its sequence above the stored lease's
      (else 409), and it renews the expiry of every live route that key last
      wrote (never reviving an expired one), then answers the count and
      digest of those routes; a digest unlike the operator's is counted;
    - the fleet view, `GET /admin/v1/fleet`: every route (one group here),
      with an ETag that changes when a route's sequence, ready replicas or
      expiry state changes, and 304 to a matching If-None-Match.

    A route's expiry is max(its receive time, its key's last renewal) +
    ttlSeconds, on this machine's clock. Serves today's operator (per-route
    PUT heartbeats, no lease) and a leasing one alike, so one script
    measures both."""

    def __init__(self):
        # Reentrant: a reply counts its status while a write holds the lock.
        self.lock = threading.RLock()
        self.routes = {}
        self.expires = {}
        self.received = {}
        self.tombstones = {}
        self.leases = {}
        self.first_put = {}
        self.requests = {k: 0 for k in REQUEST_KINDS}
        self.statuses = {}
        self.puts = 0
        self.deletes = 0
        self.gets = 0
        self.rejected = 0
        self.stale = 0
        self.lease_mismatches = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def reply(self, code, body=b"", headers=()):
                with receiver.lock:
                    key = f"{self.kind} {code}"
                    receiver.statuses[key] = receiver.statuses.get(key, 0) + 1
                self.send_response(code)
                for k, v in headers:
                    self.send_header(k, v)
                if code != 304:
                    self.send_header("content-length", str(len(body)))
                    self.send_header("content-type", "application/json")
                self.end_headers()
                if code != 304:
                    self.wfile.write(body)

            def handle_admin(self, method):
                n = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(n) if n else b""
                path = self.path.split("?")[0]
                segments = path.removeprefix(ROUTES_PATH + "/").split("/")
                if path.startswith(ROUTES_PATH + "/") and len(segments) == 3:
                    self.kind = {"PUT": "route_put", "DELETE": "route_delete", "GET": "route_get"}.get(method, "other")
                elif path == ROUTES_PATH and method == "GET":
                    self.kind = "route_list"
                elif path.startswith(LEASES_PREFIX) and method == "PUT":
                    self.kind = "lease_put"
                elif path == FLEET_PATH and method == "GET":
                    self.kind = "fleet_get"
                else:
                    self.kind = "other"
                with receiver.lock:
                    receiver.requests[self.kind] += 1
                if self.kind == "other":
                    return self.reply(404, error("not_found", f"no route for {method} {path}"))
                if not verify(self.headers, method, path, body):
                    with receiver.lock:
                        receiver.rejected += 1
                    return self.reply(401, error("invalid_signature", "bad signature"))
                if self.kind == "route_list":
                    with receiver.lock:
                        views = [receiver.view(k) for k in sorted(receiver.routes)]
                    return self.reply(200, json.dumps({"routes": views}).encode())
                if self.kind == "fleet_get":
                    return self.fleet()
                if self.kind == "lease_put":
                    return self.lease(path.removeprefix(LEASES_PREFIX), body)
                key = "/".join(segments)
                with receiver.lock:
                    if method == "GET":
                        receiver.gets += 1
                        tomb = receiver.tombstones.get(key)
                        return self.reply(200, json.dumps({
                            "route": receiver.view(key),
                            "tombstone": {"sequence": tomb} if tomb is not None else None}).encode())
                    try:
                        doc = json.loads(body)
                        sequence = doc["sequence"]
                        if method == "PUT" and not doc.get("upstreamToken"):
                            raise KeyError("upstreamToken")
                    except (ValueError, KeyError, TypeError) as e:
                        receiver.rejected += 1
                        return self.reply(400, error("invalid_route", f"bad body: {e}"))
                    stored = max(receiver.routes.get(key, {}).get("sequence", 0), receiver.tombstones.get(key, 0))
                    if method == "DELETE" and key in receiver.tombstones and key not in receiver.routes:
                        receiver.deletes += 1
                        return self.reply(204)
                    if sequence <= stored:
                        receiver.stale += 1
                        return self.reply(409, error("stale_sequence", f"sequence {sequence} is not above {stored}"))
                    if method == "PUT":
                        receiver.puts += 1
                        now = time.time()
                        receiver.routes[key] = doc
                        receiver.received[key] = now
                        receiver.expires[key] = now + int(doc.get("ttlSeconds") or TTL_S)
                        receiver.tombstones.pop(key, None)
                        receiver.first_put.setdefault(key, time.monotonic())
                        return self.reply(200, json.dumps({"route": receiver.view(key)}).encode())
                    receiver.deletes += 1
                    receiver.routes.pop(key, None)
                    receiver.expires.pop(key, None)
                    receiver.received.pop(key, None)
                    receiver.tombstones[key] = sequence
                return self.reply(204)

            def lease(self, key_id, body):
                if key_id != self.headers.get("x-backhaul-key-id"):
                    return self.reply(403, error("out_of_scope", f"a key renews only its own lease, not {key_id!r}"))
                try:
                    doc = json.loads(body)
                    sequence, count, digest = doc["sequence"], doc["routes"], doc["digest"]
                    if not isinstance(sequence, int) or not isinstance(count, int) or not re.fullmatch(r"[0-9a-f]{64}", digest):
                        raise ValueError("sequence, routes or digest")
                except (ValueError, KeyError, TypeError) as e:
                    with receiver.lock:
                        receiver.rejected += 1
                    return self.reply(400, error("invalid_lease", f"bad lease: {e}"))
                with receiver.lock:
                    stored = receiver.leases.get(key_id, {}).get("sequence", 0)
                    if sequence <= stored:
                        receiver.stale += 1
                        return self.reply(409, error("stale_sequence", f"sequence {sequence} is not above {stored}"))
                    now = time.time()
                    receiver.leases[key_id] = {"sequence": sequence, "renewedAt": now}
                    # Every route here was written by the run's one key.
                    held = []
                    for key, doc in receiver.routes.items():
                        if receiver.expires[key] > now:
                            receiver.expires[key] = max(receiver.expires[key], now + int(doc.get("ttlSeconds") or TTL_S))
                            held.append((key, doc["sequence"]))
                    ours, our_digest = routes_digest(held)
                    if (ours, our_digest) != (count, digest):
                        receiver.lease_mismatches += 1
                answer = {"lease": {"keyId": key_id, "sequence": sequence, "renewedAt": rfc3339(now),
                                    "routes": ours, "digest": our_digest}}
                return self.reply(200, json.dumps(answer).encode())

            def fleet(self):
                now = time.time()
                models = {}
                with receiver.lock:
                    for key in sorted(receiver.routes):
                        doc = receiver.routes[key]
                        models.setdefault(doc.get("model", ""), []).append({
                            "namespace": doc.get("namespace"), "name": doc.get("name"), "region": doc.get("region"),
                            "keyId": KEY_ID, "readyReplicas": doc.get("readyReplicas"),
                            "receivedAt": rfc3339(receiver.received[key]), "expiresAt": rfc3339(receiver.expires[key]),
                            "expired": receiver.expires[key] <= now, "_sequence": doc["sequence"]})
                # The version leaves out the times a renewal moves, so a
                # settled fleet keeps its version and a poll gets 304.
                version = hashlib.sha256(json.dumps(
                    [(e["namespace"], e["name"], e["region"], e["_sequence"], e["readyReplicas"], e["expired"])
                     for entries in models.values() for e in entries]).encode()).hexdigest()[:16]
                etag = f'"{version}"'
                if self.headers.get("if-none-match") in (etag, version):
                    return self.reply(304, headers=[("etag", etag)])
                for entries in models.values():
                    for e in entries:
                        del e["_sequence"]
                return self.reply(200, json.dumps({"version": version, "models": models}).encode(), headers=[("etag", etag)])

            def do_PUT(self):
                self.handle_admin("PUT")

            def do_DELETE(self):
                self.handle_admin("DELETE")

            def do_GET(self):
                self.handle_admin("GET")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def view(self, key):
        """The stored view: the route less its upstreamToken, with its fingerprint. Caller holds the lock."""
        route = self.routes.get(key)
        if route is None:
            return None
        out = {k: v for k, v in route.items() if k != "upstreamToken"}
        out["upstreamTokenSha256"] = hashlib.sha256(route["upstreamToken"].encode()).hexdigest()[:16]
        out["keyId"] = KEY_ID
        out["receivedAt"] = rfc3339(self.received[key])
        out["expiresAt"] = rfc3339(self.expires[key])
        out["expired"] = self.expires[key] <= time.time()
        return out

    def counts(self):
        with self.lock:
            now = time.time()
            return {"routes": len(self.routes), "expired": sum(1 for t in self.expires.values() if t <= now),
                    "puts": self.puts, "deletes": self.deletes, "gets": self.gets,
                    "rejected": self.rejected, "stale_sequence": self.stale,
                    "leases": len(self.leases), "lease_digest_mismatches": self.lease_mismatches}

    def request_counts(self):
        """Admin requests so far, by kind, and by kind and status."""
        with self.lock:
            return dict(self.requests), dict(self.statuses)

    def heartbeat_puts(self, heartbeat_s):
        """The PUTs heartbeats alone account for so far: each route's first
        PUT, then one every heartbeat_s (what the operator owes the Worker's
        TTL; content changes such as capacity add to it)."""
        now = time.monotonic()
        with self.lock:
            return sum(1 + int((now - first) // heartbeat_s) for first in self.first_put.values())

    def first_puts(self, prefix):
        """Monotonic time of the first PUT of each route whose key starts with `prefix`."""
        with self.lock:
            return {k: t for k, t in self.first_put.items() if k.startswith(prefix)}

    def stop(self):
        self.server.shutdown()


def memory_mib(pid):
    """A process's VmRSS (resident now) and VmHWM (its peak), in MiB."""
    out = {}
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(("VmRSS", "VmHWM")):
            key, value = line.split(":")
            out[key] = round(int(value.split()[0]) / 1024, 1)
    return out


class Operator:
    """backhaul-operator watching `namespace` and publishing to `worker_url`.
    `env` adds to its environment; `wrapper` runs it under a profiler (say
    `heaptrack -o FILE`), in a process group of its own. Such a wrapper does
    not pass signals on, and its helpers must outlive the operator to write
    their data: stop signals the operator itself and waits for the wrapper."""

    def __init__(self, namespace, worker_url, log_path, env=None, wrapper=()):
        self.metrics_port = free_port()
        self.wrapped = bool(wrapper)
        env = dict(os.environ, BACKHAUL_PUBLISH_KEY_FILE=KEY_FILE, BACKHAUL_PUBLISH_KEY_ID=KEY_ID,
                   RUST_LOG=os.environ.get("RUST_LOG", "warn"), **(env or {}))
        self.log = open(log_path, "a")
        self.proc = subprocess.Popen(
            [*wrapper, OPERATOR, "--watch-namespace", namespace, "--worker-url", worker_url,
             "--metrics-addr", f"127.0.0.1:{self.metrics_port}", "--identity", f"bench-{namespace}"],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=self.wrapped)
        deadline = time.time() + 60
        while True:
            try:
                http_get(f"http://127.0.0.1:{self.metrics_port}/readyz", timeout=2)
                break
            except Exception:
                if self.proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"operator did not become ready (see {log_path})")
                time.sleep(0.2)

    def metrics(self):
        return http_get(f"http://127.0.0.1:{self.metrics_port}/metrics")

    def pid(self):
        """The operator's own PID (under a wrapper, the member of its group
        that runs the operator binary)."""
        if not self.wrapped:
            return self.proc.pid
        target = os.path.realpath(OPERATOR)
        group = subprocess.run(["pgrep", "-g", str(self.proc.pid)], capture_output=True, text=True).stdout.split()
        for pid in group:
            try:
                if os.path.realpath(f"/proc/{pid}/exe") == target:
                    return int(pid)
            except OSError:
                pass
        raise RuntimeError("operator process not found")

    def memory_mib(self):
        return memory_mib(self.pid())

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if self.log.closed:
            return
        if self.proc.poll() is None:
            os.kill(self.pid(), sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                if self.wrapped:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                else:
                    self.proc.kill()
                self.proc.wait()
        self.log.close()


def histogram(text, name):
    """{le: cumulative count} summed over label sets, plus the sum."""
    buckets, total = {}, 0.0
    for line in text.splitlines():
        if line.startswith(name + "_bucket"):
            le = re.search(r'le="([^"]+)"', line).group(1)
            le = float("inf") if le == "+Inf" else float(le)
            buckets[le] = buckets.get(le, 0) + float(line.rsplit(" ", 1)[1])
        elif line.startswith(name + "_sum"):
            total += float(line.rsplit(" ", 1)[1])
    return dict(sorted(buckets.items())), total


def kube_requests(text):
    """The operator's own requests to the API server, by HTTP method."""
    out = {}
    for line in text.splitlines():
        if line.startswith("backhaul_operator_kube_requests_total{"):
            method = re.search(r'method="([^"]+)"', line).group(1)
            out[method] = out.get(method, 0) + int(float(line.rsplit(" ", 1)[1]))
    return out


def counter(text, name, **labels):
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
    return total


def quantile(buckets, q):
    """histogram_quantile: linear interpolation inside the bucket."""
    count = buckets.get(float("inf"), 0)
    if count == 0:
        return None
    rank = q * count
    prev_le, prev_c = 0.0, 0.0
    for le, c in buckets.items():
        if c >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * ((rank - prev_c) / (c - prev_c) if c > prev_c else 0)
        prev_le, prev_c = le, c
    return prev_le


def api_writes():
    """API server's write requests on the resources the operator touches."""
    text = kubectl("get", "--raw", "/metrics")
    out = {}
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
        if labels.get("verb") in WRITE_VERBS and labels.get("resource") in TOUCHED:
            key = f'{labels["verb"]} {labels["resource"]}{"/" + labels["subresource"] if labels.get("subresource") else ""}'
            out[key] = out.get(key, 0) + float(line.rsplit(" ", 1)[1])
    return out


def delta(after, before):
    d = {k: int(after.get(k, 0) - before.get(k, 0)) for k in set(after) | set(before)}
    return {k: v for k, v in sorted(d.items()) if v}


def resource_versions(namespace):
    out = {}
    for kind in ["modeldeployments.backhaul.dev", "deployments.apps", "services", "poddisruptionbudgets.policy", "secrets"]:
        # Of the Secrets, only those the operator makes (each ModelDeployment's upstream credential).
        select = ["-l", "app.kubernetes.io/managed-by=backhaul-operator"] if kind == "secrets" else []
        items = json.loads(kubectl("get", kind, "-n", namespace, *select, "-o", "json"))["items"]
        for item in items:
            out[f"{kind}/{item['metadata']['name']}"] = item["metadata"]["resourceVersion"]
    return out


def model_deployment(namespace, name, ttl):
    return {
        "apiVersion": "backhaul.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "model": {"source": "/models/smollm2", "format": "gguf",
                      "ggufFiles": ["SmolLM2-135M-Instruct.Q4_1.gguf"], "servedName": name},
            # CPU replicas: the fake nodes' GPUs would not hold 3,000 pods.
            "resources": {"gpusPerReplica": 0},
            "regions": [{"name": r, "replicas": 1, "location": {"latitude": lat, "longitude": lon},
                         "endpoint": f"https://{r}.{name}.bench.example.com"}
                        for r, (lat, lon) in REGIONS.items()],
            "routing": {"ttlSeconds": ttl},
        },
    }


def pod_timeline(namespace, started_wall):
    """When the control plane (controller-manager, scheduler, kwok) created
    and readied the pods, in seconds after the objects were created: shows
    whether the operator or the rest of the control plane sets the pace."""
    from datetime import datetime
    ts = lambda t: datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp() - started_wall
    created, ready = [], []
    for pod in json.loads(kubectl("get", "pods", "-n", namespace, "-o", "json"))["items"]:
        created.append(ts(pod["metadata"]["creationTimestamp"]))
        for c in (pod.get("status") or {}).get("conditions") or []:
            if c["type"] == "Ready" and c["status"] == "True":
                ready.append(ts(c["lastTransitionTime"]))
    created.sort()
    ready.sort()
    pick = lambda xs, q: round(xs[min(len(xs) - 1, int(q * len(xs)))], 1) if xs else None
    return {"count": len(created), "ready": len(ready),
            "created_s": {"p50": pick(created, 0.5), "last": pick(created, 1.0)},
            "ready_s": {"p50": pick(ready, 0.5), "last": pick(ready, 1.0)},
            "note": "whole seconds (Kubernetes timestamps)"}


def apiserver_pressure():
    """Requests the API server is working on, and its 504s so far, by verb and resource."""
    text = kubectl("get", "--raw", "/metrics")
    out = {"inflight": {}, "timeouts_504": {}}
    for line in text.splitlines():
        if line.startswith("apiserver_current_inflight_requests{"):
            out["inflight"][re.search(r'request_kind="([^"]+)"', line).group(1)] = float(line.rsplit(" ", 1)[1])
        elif line.startswith("apiserver_request_total{") and 'code="504"' in line:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            key = f'{labels["verb"]} {labels["resource"]}'
            out["timeouts_504"][key] = out["timeouts_504"].get(key, 0) + float(line.rsplit(" ", 1)[1])
    return out


def log_errors(path):
    """Operator log lines by message, ANSI colours stripped."""
    counts = {}
    for line in open(path, errors="replace"):
        line = re.sub(r"\x1b\[[0-9;]*m", "", line)
        if " ERROR " in line or " WARN " in line:
            msg = line.split(" ", 1)[1].strip()[:120]
            counts[msg] = counts.get(msg, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1])[:5])


def published_count(namespace):
    items = json.loads(kubectl("get", "modeldeployments.backhaul.dev", "-n", namespace, "-o", "json"))["items"]
    n = 0
    for item in items:
        for c in (item.get("status") or {}).get("conditions") or []:
            if c["type"] == "Published" and c["status"] == "True":
                n += 1
    return n, len(items)


def extra_nodes(action):
    docs = []
    for region in REGIONS:
        name = f"bench-cp-{region}"
        if action == "delete":
            kubectl("delete", "node", name, "--ignore-not-found", "--wait=false")
            continue
        docs.append({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                         "labels": {"type": "kwok", "backhaul.dev/bench": "control-plane", "kubernetes.io/hostname": name,
                                    "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                                    "topology.kubernetes.io/region": region, "topology.kubernetes.io/zone": f"{region}-b"}},
            "status": {"capacity": {"cpu": "1000", "memory": "8Ti", "pods": "1100"},
                       "allocatable": {"cpu": "1000", "memory": "8Ti", "pods": "1100"}},
        })
    if docs:
        kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}))
        deadline = time.time() + 60
        while time.time() < deadline:
            ready = kubectl("get", "nodes", "-l", "backhaul.dev/bench=control-plane", "-o",
                            'jsonpath={range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\\n"}{end}')
            if ready.split().count("True") == len(REGIONS):
                return
            time.sleep(1)
        raise RuntimeError("bench kwok nodes did not become Ready")


def wait(what, fn, timeout, every=1.0):
    deadline = time.time() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.time() > deadline:
            raise TimeoutError(what)
        time.sleep(every)


def delete_namespace(namespace, timeout):
    kubectl("delete", "namespace", namespace, "--ignore-not-found", "--wait=false")
    try:
        wait(f"namespace {namespace} gone",
             lambda: not kubectl("get", "namespace", namespace, "--ignore-not-found", "-o", "name").strip(), timeout, 2)
        return True
    except TimeoutError:
        return False


def nearest_rank(xs, q):
    """The q-quantile by nearest rank (with 20 samples p99 is the largest)."""
    s = sorted(xs)
    return round(s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))], 3) if s else None


def cpu_seconds(pid):
    """A process's user + system CPU time so far, in seconds."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class PublishedWatch:
    """`kubectl get --watch-only -o json` on the probe objects: the moment
    each one is first seen with Published=True (a watch event, not a poll)."""

    def __init__(self, namespace):
        self.seen = {}
        self.lock = threading.Lock()
        self.proc = subprocess.Popen(
            ["kubectl", "get", "modeldeployments.backhaul.dev", "-n", namespace, "-l", f"{PROBE_LABEL}=true",
             "--watch-only", "-o", "json"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        threading.Thread(target=self.read, daemon=True).start()

    def read(self):
        decoder, buf = json.JSONDecoder(), ""
        for line in self.proc.stdout:
            buf += line
            while True:
                buf = buf.lstrip()
                try:
                    obj, end = decoder.raw_decode(buf)
                except ValueError:
                    break
                buf = buf[end:]
                now = time.monotonic()
                conditions = (obj.get("status") or {}).get("conditions") or []
                if any(c.get("type") == "Published" and c.get("status") == "True" for c in conditions):
                    with self.lock:
                        self.seen.setdefault(obj["metadata"]["name"], now)

    def published_at(self, name):
        with self.lock:
            return self.seen.get(name)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


def probe_latency(namespace, receiver, probes, gap_s):
    """apply → Published for one new object at a time while the others are
    settled: `probes` objects, each created alone once the one before is
    Published and `gap_s` has passed, timed from starting `kubectl create`
    to the watch event showing Published=True; also from there to the
    receiver's first PUT of the object's routes (first region, and the last
    region's first). A probe the watch missed is found by polling (marked)."""
    watch = PublishedWatch(namespace)
    samples = []
    try:
        # The watch lists before it watches; a probe created before then
        # would still show its Published transition as an event, but wait
        # for kubectl to be running its watch anyway.
        time.sleep(3)
        for i in range(probes):
            name = f"probe{i}"
            md = model_deployment(namespace, name, TTL_S)
            md["metadata"]["labels"] = {PROBE_LABEL: "true"}
            started = time.monotonic()
            kubectl("create", "-f", "-", input=json.dumps(md))
            created = time.monotonic()
            how, deadline, next_poll = "watch", started + 120, started + 10
            while (at := watch.published_at(name)) is None:
                now = time.monotonic()
                if now > deadline:
                    raise TimeoutError(f"probe {name} not Published after 120 s")
                if now > next_poll:
                    # The watch may have missed it (or ended): ask once a second from here.
                    next_poll = now + 1
                    item = json.loads(kubectl("get", "modeldeployments.backhaul.dev", name, "-n", namespace, "-o", "json"))
                    if any(c["type"] == "Published" and c["status"] == "True"
                           for c in (item.get("status") or {}).get("conditions") or []):
                        at, how = now, "poll (1 s)"
                        break
                time.sleep(0.01)
            puts = sorted(receiver.first_puts(f"{namespace}/{name}/").values())
            sample = {"name": name, "published_s": round(at - started, 3), "create_returned_s": round(created - started, 3),
                      "first_put_s": round(puts[0] - started, 3) if puts else None, "seen_by": how, "_started": started}
            samples.append(sample)
            log(f"probe {name}: {sample}")
            time.sleep(gap_s)
    finally:
        watch.stop()
    # Every region's first PUT, by now (Published turns True with the first).
    for s in samples:
        puts = sorted(receiver.first_puts(f"{namespace}/{s['name']}/").values())
        started = s.pop("_started")
        s["all_regions_put_s"] = round(puts[-1] - started, 3) if len(puts) == len(REGIONS) else None
    # When the pods turned Ready, by the API server's whole-second clock.
    from datetime import datetime
    ts = lambda t: datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp()
    created_at = {item["metadata"]["name"]: ts(item["metadata"]["creationTimestamp"]) for item in json.loads(kubectl(
        "get", "modeldeployments.backhaul.dev", "-n", namespace, "-l", f"{PROBE_LABEL}=true", "-o", "json"))["items"]}
    pods = json.loads(kubectl("get", "pods", "-n", namespace, "-l",
                              f"backhaul.dev/model in ({','.join(s['name'] for s in samples)})", "-o", "json"))["items"]
    ready = {}
    for pod in pods:
        model = pod["metadata"]["labels"]["backhaul.dev/model"]
        for c in (pod.get("status") or {}).get("conditions") or []:
            if c["type"] == "Ready" and c["status"] == "True" and model in created_at:
                ready[model] = max(ready.get(model, 0), ts(c["lastTransitionTime"]) - created_at[model])
    for s in samples:
        s["pods_ready_s"] = ready.get(s["name"])
    published = [s["published_s"] for s in samples]
    first_put = [s["first_put_s"] for s in samples if s["first_put_s"] is not None]
    return {"probes": probes, "gap_s": gap_s,
            "published_s": {"p50": nearest_rank(published, 0.5), "p99": nearest_rank(published, 0.99),
                            "max": max(published), "min": min(published)},
            "first_put_s": {"p50": nearest_rank(first_put, 0.5), "p99": nearest_rank(first_put, 0.99)},
            "pods_ready_s_note": "last pod Ready minus the object's creationTimestamp, whole seconds (Kubernetes timestamps)",
            "samples": samples}


def delete_probes(namespace):
    """Deletes the probes while the operator runs (it withdraws their routes) and waits until they are gone."""
    kubectl("delete", "modeldeployments.backhaul.dev", "-n", namespace, "-l", f"{PROBE_LABEL}=true", "--wait=false")
    started = time.monotonic()
    wait("probes deleted", lambda: not kubectl("get", "modeldeployments.backhaul.dev", "-n", namespace, "-l",
                                               f"{PROBE_LABEL}=true", "-o", "name").strip(), 300, 0.5)
    return round(time.monotonic() - started, 3)


def scale_run(count, logs):
    namespace = f"bench-cp-{count}"
    delete_namespace(namespace, 600)
    kubectl("create", "namespace", namespace)
    wait("default ServiceAccount", lambda: kubectl("get", "serviceaccount", "default", "-n", namespace,
                                                  "--ignore-not-found", "-o", "name").strip(), 60, 0.5)
    receiver = Receiver()
    operator = Operator(namespace, receiver.url, os.path.join(logs, f"operator-{count}.log"))
    result = {"objects": count, "regions_per_object": len(REGIONS)}
    try:
        manifest = json.dumps({"apiVersion": "v1", "kind": "List",
                               "items": [model_deployment(namespace, f"m{i}", TTL_S) for i in range(count)]})
        started = time.monotonic()
        started_wall = time.time()
        kubectl("create", "-f", "-", input=manifest)
        result["create_s"] = round(time.monotonic() - started, 3)
        routes_at = None
        last_log = 0.0
        while True:
            published, total = published_count(namespace)
            now = time.monotonic()
            if routes_at is None and receiver.counts()["routes"] >= len(REGIONS) * count:
                routes_at = now
            if published == count:
                break
            if now - last_log > 15:
                log(f"{count}: {published}/{total} Published after {now - started:.0f} s, receiver {receiver.counts()}")
                last_log = now
            if now - started > float(os.environ.get("CONTROL_PLANE_TIMEOUT_S", "1500")):
                # Measure as far as it went.
                result["timed_out"] = {"after_s": round(now - started, 1), "published": published,
                                       "receiver": receiver.counts(),
                                       "operator_memory_mib": operator.memory_mib(),
                                       "pods": pod_timeline(namespace, started_wall),
                                       "objects": {k: len(kubectl("get", k, "-n", namespace, "-o", "name").split())
                                                   for k in ("deployments.apps", "services", "pods")},
                                       "apiserver": apiserver_pressure(),
                                       "operator_log_errors": log_errors(operator.log.name)}
                raise TimeoutError(f"{published}/{count} Published after {now - started:.0f} s")
            time.sleep(0.5 if count < 100 else 1.0)
        done = time.monotonic()
        if routes_at is None:
            routes_at = wait("all routes", lambda: receiver.counts()["routes"] >= len(REGIONS) * count and time.monotonic(), 120, 0.2)
        result["apply_to_published_s"] = round(done - started, 3)
        result["apply_to_all_routes_s"] = round(routes_at - started, 3)
        log(f"{count}: all Published after {result['apply_to_published_s']} s")
        result["pods"] = pod_timeline(namespace, started_wall)
        time.sleep(5)
        text = operator.metrics()
        buckets, total = histogram(text, "backhaul_operator_reconcile_duration_seconds")
        n = buckets.get(float("inf"), 0)
        result["reconciles"] = int(n)
        result["reconcile_s"] = {"p50": quantile(buckets, 0.5), "p99": quantile(buckets, 0.99),
                                 "mean": total / n if n else None, "buckets": {str(k): v for k, v in buckets.items()}}
        result["operator_memory_mib"] = operator.memory_mib()
        result["receiver"] = receiver.counts()
        result["receiver"]["heartbeat_puts"] = receiver.heartbeat_puts(TTL_S // 3)

        # Settled: heartbeats reconcile every object again with nothing to
        # change. The operator's own request counter says what that costs.
        text = operator.metrics()
        before, reconciles_before = kube_requests(text), counter(text, "backhaul_operator_reconciles_total")
        puts_before = receiver.counts()["puts"]
        kinds_before, statuses_before = receiver.request_counts()
        cpu_before, window_started = cpu_seconds(operator.pid()), time.monotonic()
        time.sleep(STEADY_WINDOW_S)
        window = time.monotonic() - window_started
        cpu = cpu_seconds(operator.pid()) - cpu_before
        text = operator.metrics()
        kinds, statuses = receiver.request_counts()
        by_kind = delta(kinds, kinds_before)
        result["steady"] = {
            "window_s": STEADY_WINDOW_S,
            "reconciles": int(counter(text, "backhaul_operator_reconciles_total") - reconciles_before),
            "operator_requests": delta(kube_requests(text), before),
            "worker_puts": receiver.counts()["puts"] - puts_before,
            # Every admin request the operator sent the receiver in the window, by kind and status.
            "publication_requests": by_kind,
            "publication_statuses": delta(statuses, statuses_before),
            "publication_requests_per_min": round(sum(by_kind.values()) * 60 / window, 2),
            "publication_requests_per_min_by_kind": {k: round(v * 60 / window, 2) for k, v in by_kind.items()},
            "operator_cpu_s": round(cpu, 2),
            "operator_cpu_pct": round(100 * cpu / window, 1),
            "operator_memory_mib": operator.memory_mib(),
            "receiver": receiver.counts(),
        }
        log(f"{count}: steady {STEADY_WINDOW_S} s: {result['steady']}")

        # One new object at a time while the others are settled.
        if PROBES:
            result["probe"] = probe_latency(namespace, receiver, PROBES, PROBE_GAP_S)
            log(f"{count}: apply → Published of one object: {result['probe']['published_s']}")
            result["probe"]["delete_s"] = delete_probes(namespace)
            result["operator_memory_mib_after_probes"] = operator.memory_mib()

        # A forced no-op resync: restart the operator; it reconciles every
        # object once more with nothing to change.
        versions = resource_versions(namespace)
        idle_before = api_writes()
        operator.stop()
        puts_before = receiver.counts()["puts"]
        restart = time.monotonic()
        operator = Operator(namespace, receiver.url, os.path.join(logs, f"operator-{count}.log"))
        wait("every object reconciled after the restart",
             lambda: counter(operator.metrics(), "backhaul_operator_reconciles_total") >= count, 900, 0.5)
        resync_s = time.monotonic() - restart
        time.sleep(3)
        window = time.monotonic() - restart
        after = api_writes()
        writes = delta(after, idle_before)
        # The same length of time with the operator idle, for what others
        # (controller-manager, kwok, other users of this control plane) wrote.
        idle2_before = api_writes()
        time.sleep(window)
        idle_writes = delta(api_writes(), idle2_before)
        changed = [k for k, v in resource_versions(namespace).items() if versions.get(k) != v]
        result["noop_resync"] = {
            # Everything the restarted operator asked of the API server:
            # its watches' lists, reads adopting children, any write.
            "operator_requests": kube_requests(operator.metrics()),
            "seconds_to_reconcile_all": round(resync_s, 3),
            "objects_changed": len(changed),
            "objects_changed_examples": changed[:5],
            "api_writes_during_resync": writes,
            "api_writes_same_length_idle": idle_writes,
            "worker_puts": receiver.counts()["puts"] - puts_before,
            "window_s": round(window, 3),
        }
        result["operator_memory_mib_after_restart"] = operator.memory_mib()
        log(f"{count}: no-op resync changed {len(changed)} objects; writes {writes}; idle {idle_writes}")
    except TimeoutError as e:
        result["error"] = str(e)
        # Stop the operator first so the API server recovers, then release
        # the objects' finalizers ourselves (the receiver is thrown away).
        operator.stop()
        items = json.loads(kubectl("get", "modeldeployments.backhaul.dev", "-n", namespace, "-o", "json"))
        for item in items["items"]:
            item["metadata"]["finalizers"] = []
        kubectl("replace", "-f", "-", input=json.dumps(items), check=False)
    finally:
        # Delete the objects while the operator runs, so it withdraws their
        # routes and clears the finalizers (the garbage collector removes the
        # children), then the namespace, without waiting for it.
        kubectl("delete", "modeldeployments.backhaul.dev", "--all", "-n", namespace, "--wait=false")
        try:
            wait("ModelDeployments deleted", lambda: not kubectl(
                "get", "modeldeployments.backhaul.dev", "-n", namespace, "-o", "name", check=False).strip(), 900, 2)
            result["cleanup_complete"] = True
        except TimeoutError:
            result["cleanup_complete"] = False
        kubectl("delete", "namespace", namespace, "--ignore-not-found", "--wait=false")
        operator.stop()
        receiver.stop()
    return result


def worker_expiry(logs):
    """The time a dead operator's region takes to be marked expired by the Worker."""
    namespace = "bench-cp-expiry"
    ttl = 10
    node = os.path.join(CACHE, "node", "bin")
    port = free_port()
    persist = tempfile.mkdtemp(prefix="backhaul-cp-wrangler-")
    env = dict(os.environ, PATH=f"{node}:{os.environ['PATH']}")
    # The Worker's settings in an env file (its JSON holds colons and quotes, which
    # --var NAME:VALUE would mangle; --env-file also makes wrangler ignore
    # worker/.dev.vars): the run's publisher key; no client keys, so anonymous
    # clients are allowed (the Worker otherwise refuses them).
    dev_vars = os.path.join(persist, ".dev.vars")
    with open(os.open(dev_vars, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
        f.write(f"BACKHAUL_PUBLISHERS='{PUBLISHERS}'\nBACKHAUL_API_KEYS=\"\"\nALLOW_ANONYMOUS=\"true\"\n")
    dev = subprocess.Popen(
        ["npx", "wrangler", "dev", "--env", "local", "--ip", "127.0.0.1", "--port", str(port), "--persist-to", persist,
         "--env-file", dev_vars, "--log-level", "error"],
        cwd=os.path.join(REPO, "worker"), env=env, stdout=subprocess.DEVNULL,
        stderr=open(os.path.join(logs, "wrangler-expiry.log"), "w"), start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    operator = None
    try:
        def up():
            try:
                return http_get(f"{base}/health", 2) and True
            except Exception:
                return False
        wait("wrangler dev", up, 120, 0.25)

        def routes():
            path = "/admin/v1/routes"
            req = urllib.request.Request(base + path, headers=signed_headers("GET", path))
            with urllib.request.urlopen(req, timeout=5) as r:
                return json.load(r)["routes"]

        delete_namespace(namespace, 300)
        kubectl("create", "namespace", namespace)
        wait("default ServiceAccount", lambda: kubectl("get", "serviceaccount", "default", "-n", namespace,
                                                      "--ignore-not-found", "-o", "name").strip(), 60, 0.5)
        operator = Operator(namespace, base, os.path.join(logs, "operator-expiry.log"))
        md = model_deployment(namespace, "expiry", ttl)
        md["spec"]["regions"] = md["spec"]["regions"][:1]
        md["spec"]["regions"][0]["endpoint"] = "http://127.0.0.1:9"
        kubectl("create", "-f", "-", input=json.dumps(md))

        def live():
            rs = [r for r in routes() if r["namespace"] == namespace]
            return rs and not rs[0].get("expired") and rs[0]
        route = wait("route published", live, 120, 0.2)
        # Let at least one heartbeat pass, so the kill lands at a random
        # point of the heartbeat period, as a real failure would.
        time.sleep(ttl / 3 + 1.3)
        operator.stop(signal.SIGKILL)
        killed = time.monotonic()

        def expired():
            rs = [r for r in routes() if r["namespace"] == namespace]
            return rs and rs[0].get("expired") and rs[0]
        gone = wait("route expired", expired, ttl * 3, 0.05)
        seconds = time.monotonic() - killed
        return {"ttl_seconds": ttl, "heartbeat_seconds": ttl // 3, "seconds_from_operator_kill_to_expired": round(seconds, 3),
                "last_published_at": gone.get("publishedAt"), "first_published_at": route.get("publishedAt")}
    finally:
        operator2 = Operator(namespace, base, os.path.join(logs, "operator-expiry.log")) if operator else None
        kubectl("delete", "modeldeployments.backhaul.dev", "--all", "-n", namespace, "--wait=false", check=False)
        try:
            wait("ModelDeployments deleted", lambda: not kubectl(
                "get", "modeldeployments.backhaul.dev", "-n", namespace, "-o", "name", check=False).strip(), 120, 1)
        except TimeoutError:
            pass
        kubectl("delete", "namespace", namespace, "--ignore-not-found", "--wait=false")
        if operator2:
            operator2.stop()
        os.killpg(dev.pid, signal.SIGTERM)
        dev.wait(30)


def install_crd():
    """The ModelDeployment CRD of the operator under test, established."""
    crd = subprocess.run([OPERATOR, "crd"], check=True, capture_output=True, text=True).stdout
    kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=crd)
    kubectl("wait", "--for=condition=Established", "crd/modeldeployments.backhaul.dev", "--timeout=60s")


def main():
    counts = [int(c) for c in (sys.argv[1] if len(sys.argv) > 1 else "1,100,1000").split(",") if c]
    logs = os.path.join(CACHE, "bench", "logs")
    os.makedirs(logs, exist_ok=True)
    kubeconfig = os.path.join(CACHE, "cluster", "kubeconfig")
    started_cluster = False
    try:
        subprocess.run(["kubectl", "--kubeconfig", kubeconfig, "--request-timeout=3s", "get", "--raw", "/readyz"],
                       check=True, capture_output=True)
    except Exception:
        log("starting the local control plane (tests/cluster/up.sh)")
        line = subprocess.run([os.path.join(REPO, "tests", "cluster", "up.sh")], check=True, capture_output=True,
                              text=True).stdout.strip().splitlines()[-1]
        kubeconfig = line.split("=", 1)[1].strip().strip("'\"")
        started_cluster = True
    os.environ["KUBECONFIG"] = kubeconfig
    install_crd()
    out = {"counts": counts, "runs": {}, "operator_binary": OPERATOR, "ttl_seconds": TTL_S,
           "operator_commit": os.environ.get("BACKHAUL_OPERATOR_COMMIT"),
           # The knobs this run was given, to repeat it.
           "env": {k: v for k, v in sorted(os.environ.items())
                   if k.startswith("CONTROL_PLANE_") or k in ("BACKHAUL_OPERATOR_BIN", "BACKHAUL_OPERATOR_COMMIT")},
           "steady_window_s": STEADY_WINDOW_S, "probes": PROBES, "probe_gap_s": PROBE_GAP_S,
           "operator_binary_mtime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(os.path.getmtime(OPERATOR))),
           "cluster": {"nodes": len(kubectl("get", "nodes", "-o", "name").split())}}
    extra_nodes("apply")
    out["cluster"]["nodes_with_bench_nodes"] = len(kubectl("get", "nodes", "-o", "name").split())
    try:
        for count in counts:
            log(f"{count} ModelDeployments")
            try:
                out["runs"][str(count)] = scale_run(count, logs)
            except Exception as e:  # measure as far as it goes
                log(f"{count}: {e}")
                out["runs"][str(count)] = {"objects": count, "error": str(e)}
        if os.environ.get("CONTROL_PLANE_EXPIRY", "1") == "1":
            try:
                out["worker_expiry"] = worker_expiry(logs)
            except Exception as e:
                log(f"expiry: {e}")
                out["worker_expiry"] = {"error": str(e)}
    finally:
        extra_nodes("delete")
        if started_cluster:
            subprocess.run([os.path.join(REPO, "tests", "cluster", "down.sh")], capture_output=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

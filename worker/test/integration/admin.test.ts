/**
 * The admin API of docs/publication.md through the Worker: the stored view,
 * deletes and tombstones, the signature and body checks, and the Worker's
 * publisher configuration. The attacks of the threat model are in
 * publication.test.ts.
 */
import { env, SELF } from "cloudflare:test";
import { describe, expect, it, vi } from "vitest";
import { loadModel } from "../../src/route-cache";
import { getRoute, KEYS, listRoutes, makeRoute, nextSequence, publish, routePath, signedRequest, TEST_UPSTREAM_TOKEN, uid } from "../helpers";
import { TEST_PUBLISHERS } from "../keys";

const fresh = (extra: Parameters<typeof makeRoute>[0] = {}) => makeRoute({ name: uid("adm"), model: uid("adm-model-"), ...extra });
type ErrorBody = { message: string; type: string; code: string; param: string | null };
const errorOf = async (res: Response) => ((await res.json()) as { error: ErrorBody }).error;
const withoutToken = <T extends { upstreamToken: string }>(r: T) => {
	const { upstreamToken: _, ...rest } = r;
	return rest;
};
async function sha256Prefix(s: string): Promise<string> {
	const d = new Uint8Array(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(s)));
	return [...d.subarray(0, 8)].map((b) => b.toString(16).padStart(2, "0")).join("");
}
const del = (route: Parameters<typeof routePath>[0], sequence: number, opts = {}) =>
	signedRequest("DELETE", routePath(route), JSON.stringify({ sequence }), opts);

describe("admin API: the stored view", () => {
	it("stores a signed route and answers the stored view: the route without its token, plus fingerprint, key, owner and the Worker's times", async () => {
		const route = fresh();
		const before = Date.now();
		const put = await publish(route);
		const after = Date.now();
		const text = await put.text();
		expect(text).not.toContain(TEST_UPSTREAM_TOKEN);
		const view = (JSON.parse(text) as { route: Record<string, unknown> }).route;
		expect(view).toEqual({
			...withoutToken(route),
			upstreamTokenSha256: "a9a4402a501dcea1",
			keyId: KEYS.admin.id,
			owner: "test/default",
			receivedAt: expect.any(String),
			expiresAt: expect.any(String),
		});
		expect(view.upstreamTokenSha256).toBe(await sha256Prefix(TEST_UPSTREAM_TOKEN));
		const receivedAt = Date.parse(view.receivedAt as string);
		expect(receivedAt).toBeGreaterThanOrEqual(before);
		expect(receivedAt).toBeLessThanOrEqual(after);
		expect(Date.parse(view.expiresAt as string)).toBe(receivedAt + route.ttlSeconds * 1000);

		// Both GETs: the same view, and never the token (the raw text).
		const table = await signedRequest("GET", "/admin/v1/routes");
		const tableText = await table.text();
		expect(tableText).not.toContain(TEST_UPSTREAM_TOKEN);
		expect((JSON.parse(tableText) as { routes: unknown[] }).routes).toContainEqual(view);
		const one = await signedRequest("GET", routePath(route));
		const oneText = await one.text();
		expect(oneText).not.toContain(TEST_UPSTREAM_TOKEN);
		expect(JSON.parse(oneText)).toEqual({ route: view, tombstone: null });
	});

	it("fingerprints each token, so a rotation shows, and gives the request path the token itself", async () => {
		const route = fresh();
		const token = `rotated-${crypto.randomUUID()}`;
		await publish(route);
		const put = await publish({ ...route, sequence: nextSequence(), upstreamToken: token });
		const text = await put.text();
		expect(text).not.toContain(token);
		expect((JSON.parse(text) as { route: { upstreamTokenSha256: string } }).route.upstreamTokenSha256).toBe(await sha256Prefix(token));
		const served = (await loadModel(env, route.model)).routes.find((r) => r.name === route.name)!;
		expect(served.upstreamToken).toBe(token);
		expect(served.receivedAtMs).toEqual(expect.any(Number));
	});

	it("never logs the token, on success or refusal", async () => {
		const spies = (["log", "info", "warn", "error", "debug"] as const).map((m) => vi.spyOn(console, m));
		try {
			const token = `logged-${crypto.randomUUID()}`;
			const route = fresh({ upstreamToken: token });
			await publish(route);
			await signedRequest("PUT", routePath(route), JSON.stringify(route)); // 409 stale_sequence
			await signedRequest("PUT", routePath(route), JSON.stringify({ ...route, sequence: nextSequence(), upstreamToken: `${token} bad` })); // 400
			await signedRequest("PUT", routePath(route), JSON.stringify(route), { signature: `ed25519=${"A".repeat(86)}==` }); // 401
			await getRoute(route);
			await listRoutes();
			for (const spy of spies) for (const call of spy.mock.calls) expect(JSON.stringify(call.map(String))).not.toContain(token);
		} finally {
			for (const spy of spies) spy.mockRestore();
		}
	});

	it("lists expired routes with expired: true, expired from when the Worker received them", async () => {
		const receivedAt = Date.now() - 61_000;
		const route = fresh({ publishedAt: new Date(receivedAt).toISOString(), ttlSeconds: 60 });
		await publish(route, { nowMs: receivedAt });
		const listed = (await listRoutes()).find((r) => r.name === route.name)!;
		expect(listed).toMatchObject({ expired: true, receivedAt: new Date(receivedAt).toISOString(), expiresAt: new Date(receivedAt + 60_000).toISOString() });
		expect((await getRoute(route)).route).toMatchObject({ expired: true });
		const live = fresh();
		await publish(live);
		expect((await listRoutes()).find((r) => r.name === live.name)).not.toHaveProperty("expired");
	});
});

describe("admin API: deletes and tombstones", () => {
	it("withdraws a route and leaves a tombstone that outlives the longest TTL", async () => {
		const route = fresh();
		await publish(route);
		const sequence = route.sequence + 1;
		const before = Date.now();
		expect((await del(route, sequence)).status).toBe(204);
		expect((await listRoutes()).some((r) => r.name === route.name)).toBe(false);
		const state = await getRoute(route);
		expect(state.route).toBeNull();
		expect(state.tombstone).toEqual({ sequence, deletedAt: expect.any(String), expiresAt: expect.any(String) });
		const deletedAt = Date.parse(state.tombstone!.deletedAt);
		expect(deletedAt).toBeGreaterThanOrEqual(before);
		expect(Date.parse(state.tombstone!.expiresAt)).toBe(deletedAt + 3600 * 1000);
	});

	it("answers 204 to a DELETE of a tombstoned key whatever its sequence, and to one of an absent key (which leaves a tombstone)", async () => {
		const route = fresh();
		await publish(route);
		expect((await del(route, route.sequence + 10)).status).toBe(204);
		expect((await del(route, route.sequence + 10)).status).toBe(204);
		expect((await del(route, 1)).status).toBe(204);
		expect((await getRoute(route)).tombstone?.sequence).toBe(route.sequence + 10);
		// A higher one raises the tombstone's sequence: a write delayed in between cannot land.
		expect((await del(route, route.sequence + 20)).status).toBe(204);
		expect((await getRoute(route)).tombstone?.sequence).toBe(route.sequence + 20);
		const late = await signedRequest("PUT", routePath(route), JSON.stringify({ ...route, sequence: route.sequence + 15 }));
		expect(late.status).toBe(409);

		const absent = fresh();
		expect((await del(absent, 5)).status).toBe(204);
		expect(await getRoute(absent)).toEqual({ route: null, tombstone: expect.objectContaining({ sequence: 5 }) });
		// The test helper's default DELETE body is {"sequence": <fresh>}.
		expect((await signedRequest("DELETE", routePath(fresh()))).status).toBe(204);
	});

	it("refuses a DELETE whose sequence is not above the stored route's (409 stale_sequence), and the route stays", async () => {
		const route = fresh();
		await publish(route);
		for (const sequence of [route.sequence, route.sequence - 1]) {
			const res = await del(route, sequence);
			expect(res.status).toBe(409);
			expect(await errorOf(res)).toMatchObject({ code: "stale_sequence", message: expect.stringContaining(String(route.sequence)) });
		}
		expect((await getRoute(route)).route).toMatchObject({ sequence: route.sequence });
	});

	it("forgets a tombstone after 3600 s", async () => {
		const route = fresh();
		const then = Date.now() - 3601_000;
		await publish({ ...route, publishedAt: new Date(then).toISOString() }, { nowMs: then });
		expect((await del(route, route.sequence + 100, { nowMs: then })).status).toBe(204);
		expect((await getRoute(route)).tombstone).toBeNull();
		// A sequence below the forgotten tombstone's is accepted now.
		await publish({ ...route, sequence: route.sequence + 1 });
	});

	it("validates the DELETE body and signs it", async () => {
		const route = fresh();
		await publish(route);
		const bodies: [string, string][] = [
			["", "invalid_json"],
			["{not json", "invalid_json"],
			["[]", "invalid_route"],
			["{}", "invalid_route"],
			['{"sequence":0}', "invalid_route"],
			['{"sequence":"9"}', "invalid_route"],
			['{"sequence":1.5}', "invalid_route"],
			[`{"sequence":${2 ** 53}}`, "invalid_route"],
		];
		for (const [body, code] of bodies) {
			const res = await signedRequest("DELETE", routePath(route), body, { emptyBody: true });
			expect(res.status, body).toBe(400);
			expect((await errorOf(res)).code, body).toBe(code);
		}
		const tampered = await signedRequest("DELETE", routePath(route), JSON.stringify({ sequence: route.sequence + 2 }), {
			signedBody: JSON.stringify({ sequence: route.sequence + 1 }),
		});
		expect(tampered.status).toBe(401);
		expect((await getRoute(route)).route).not.toBeNull();
	});
});

describe("admin API: requests", () => {
	it("rejects bad, stale, tampered and misdirected signatures with 401 invalid_signature and changes nothing", async () => {
		const route = fresh();
		const path = routePath(route);
		const body = JSON.stringify(route);
		const now = Math.floor(Date.now() / 1000);
		const cases: [string, Response][] = [
			["another key's signature", await signedRequest("PUT", path, body, { key: { ...KEYS.tenantB, id: KEYS.admin.id } })],
			["signed as another key id", await signedRequest("PUT", path, body, { signedKeyId: KEYS.tenantB.id })],
			["malformed", await signedRequest("PUT", path, body, { signature: "sha256=abc" })],
			["zeros", await signedRequest("PUT", path, body, { signature: `ed25519=${"A".repeat(86)}==` })],
			["stale", await signedRequest("PUT", path, body, { timestamp: now - 301 })],
			["future", await signedRequest("PUT", path, body, { timestamp: now + 301 })],
			["tampered body", await signedRequest("PUT", path, body, { signedBody: body.replace("us-east", "us-west") })],
			["signed for another path", await signedRequest("PUT", path, body, { signedPath: routePath({ ...route, region: "eu-west" }) })],
			["signed for another method", await signedRequest("PUT", path, body, { signedMethod: "DELETE" })],
			["bad key id", await signedRequest("PUT", path, body, { keyId: "not/a/key" })],
		];
		for (const [what, res] of cases) {
			expect(res.status, what).toBe(401);
			expect(await errorOf(res), what).toMatchObject({ type: "authentication_error", code: "invalid_signature" });
		}
		const unsigned = await SELF.fetch(`https://router.test${path}`, { method: "PUT", body, headers: { "content-type": "application/json" } });
		expect(unsigned.status).toBe(401);
		expect((await errorOf(unsigned)).message).toContain("X-Backhaul-Key-Id is missing");
		expect(await getRoute(route)).toEqual({ route: null, tombstone: null });
		expect((await signedRequest("GET", "/admin/v1/routes", "", { timestamp: now - 400 })).status).toBe(401);
	});

	it("refuses an unknown key id with 401 unknown_key, naming it", async () => {
		const route = fresh();
		for (const [method, path, body] of [
			["PUT", routePath(route), JSON.stringify(route)],
			["DELETE", routePath(route), JSON.stringify({ sequence: 5 })],
			["GET", routePath(route), ""],
			["GET", "/admin/v1/routes", ""],
		] as const) {
			const res = await signedRequest(method, path, body, { key: { ...KEYS.admin, id: "cluster-nowhere" } });
			expect(res.status, `${method} ${path}`).toBe(401);
			expect(await errorOf(res)).toMatchObject({ type: "authentication_error", code: "unknown_key", message: expect.stringContaining('"cluster-nowhere"') });
		}
		expect(await getRoute(route)).toEqual({ route: null, tombstone: null });
	});

	it("rejects invalid bodies with 400 naming the field, and path/body disagreement", async () => {
		const route = fresh();
		const path = routePath(route);
		const notJson = await signedRequest("PUT", path, "{not json");
		expect(notJson.status).toBe(400);
		expect((await errorOf(notJson)).code).toBe("invalid_json");
		const badField = await signedRequest("PUT", path, JSON.stringify({ ...route, ttlSeconds: 5 }));
		expect(badField.status).toBe(400);
		expect(await errorOf(badField)).toMatchObject({ code: "invalid_route", param: "ttlSeconds", message: expect.stringContaining("ttlSeconds") });
		const noSequence = await signedRequest("PUT", path, JSON.stringify({ ...route, sequence: undefined }));
		expect(await errorOf(noSequence)).toMatchObject({ code: "invalid_route", param: "sequence" });
		const elsewhere = await signedRequest("PUT", routePath({ ...route, region: "eu-west" }), JSON.stringify(route));
		expect(elsewhere.status).toBe(400);
		expect(await errorOf(elsewhere)).toMatchObject({ code: "path_body_mismatch", param: "region" });
		const badPath = await signedRequest("PUT", "/admin/v1/routes/Default/x/y", JSON.stringify(route));
		expect(badPath.status).toBe(400);
		expect(await getRoute(route)).toEqual({ route: null, tombstone: null });
	});

	it("rejects bodies over 64 KiB with 413 body_too_large", async () => {
		const route = fresh();
		const big = JSON.stringify({ ...route, padding: "x".repeat(64 * 1024) });
		const res = await signedRequest("PUT", routePath(route), big);
		expect(res.status).toBe(413);
		expect((await errorOf(res)).code).toBe("body_too_large");
		expect(await getRoute(route)).toEqual({ route: null, tombstone: null });
	});

	it("answers unknown admin paths and methods with OpenAI-shaped errors", async () => {
		const post = await signedRequest("POST", "/admin/v1/routes");
		expect(post.status).toBe(405);
		expect(post.headers.get("allow")).toBe("GET");
		const patch = await signedRequest("PATCH", routePath(fresh()), "{}");
		expect(patch.status).toBe(405);
		expect(patch.headers.get("allow")).toBe("GET, PUT, DELETE");
		expect((await signedRequest("GET", "/admin/v1/routes/a/b")).status).toBe(404);
	});
});

describe("admin API: the Worker's publisher configuration", () => {
	const route = makeRoute({ name: uid("cfg"), model: uid("cfg-model-") });
	const requests = [
		["PUT", routePath(route), JSON.stringify(route)],
		["DELETE", routePath(route), JSON.stringify({ sequence: 5 })],
		["GET", routePath(route), ""],
		["GET", "/admin/v1/routes", ""],
	] as const;
	const withPublishers = async (value: unknown) => {
		const out: { status: number; error: ErrorBody }[] = [];
		for (const [method, path, body] of requests) {
			const res = await signedRequest(method, path, body, { env: { BACKHAUL_PUBLISHERS: value } });
			out.push({ status: res.status, error: (await res.json<{ error: ErrorBody }>()).error });
		}
		return out;
	};
	const admin = TEST_PUBLISHERS[0]!;

	it("answers every admin request 503 without publishers", async () => {
		for (const value of [undefined, "", "  ", "[]"]) {
			for (const r of await withPublishers(value)) {
				expect(r.status, String(value)).toBe(503);
				expect(r.error, String(value)).toMatchObject({ type: "service_unavailable", code: "publishers_unset", message: expect.stringContaining("BACKHAUL_PUBLISHERS") });
			}
		}
	});

	it("answers every admin request 503 naming the malformed entry, even when the caller's own entry is fine", async () => {
		const cases: [unknown, string][] = [
			["{not json", "not JSON"],
			[JSON.stringify({ id: "x" }), "must be a JSON array"],
			[JSON.stringify([admin, "x"]), "BACKHAUL_PUBLISHERS[1]: must be an object"],
			[JSON.stringify([admin, { ...admin, id: "typo", endpointHost: ["a.example.com"] }]), 'BACKHAUL_PUBLISHERS[1] ("typo"): unknown field "endpointHost"'],
			[JSON.stringify([admin, { ...admin, id: "no-ns", namespaces: undefined }]), '("no-ns"): namespaces'],
			[JSON.stringify([admin, { ...admin, id: "empty-regions", regions: [] }]), '("empty-regions"): regions'],
			[JSON.stringify([admin, { ...admin, id: "bad-ns", namespaces: ["Not_A_Name"] }]), '("bad-ns"): namespaces'],
			[JSON.stringify([admin, { ...admin, id: "short-key", publicKey: btoa("x".repeat(31)) }]), '("short-key"): publicKey'],
			[JSON.stringify([admin, { ...admin, id: "hex-key", publicKey: "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a" }]), '("hex-key"): publicKey'],
			[JSON.stringify([admin, { ...admin, id: "bad/id" }]), "BACKHAUL_PUBLISHERS[1] (\"bad/id\"): id"],
			[JSON.stringify([admin, { ...admin, id: "slash-group", group: "a/b" }]), '("slash-group"): group'],
			[JSON.stringify([admin, { ...admin, id: "bad-host", endpointHosts: ["https://x.example.com"] }]), '("bad-host"): endpointHosts'],
			[JSON.stringify([admin, { ...admin, id: "mid-wildcard", endpointHosts: ["a.*.example.com"] }]), '("mid-wildcard"): endpointHosts'],
			[JSON.stringify([admin, admin]), `id: "${admin.id}" appears twice`],
		];
		for (const [value, names] of cases) {
			for (const r of await withPublishers(value)) {
				expect(r.status, names).toBe(503);
				expect(r.error, names).toMatchObject({ type: "service_unavailable", code: "publishers_invalid", message: expect.stringContaining(names) });
			}
		}
		expect(await getRoute(route)).toEqual({ route: null, tombstone: null });
	});

	it("accepts the configuration as a JSON value as well as a JSON string", async () => {
		const res = await signedRequest("GET", "/admin/v1/routes", "", { env: { BACKHAUL_PUBLISHERS: TEST_PUBLISHERS } });
		expect(res.status).toBe(200);
	});

	it("answers every admin request 503 when BACKHAUL_MODEL_OWNERS is malformed", async () => {
		for (const [value, names] of [
			["[1]", "JSON object"],
			["{nope", "not JSON"],
			[JSON.stringify({ m: "no-slash" }), '"m"'],
			[JSON.stringify({ "bad model": "g/ns" }), '"bad model"'],
		] as const) {
			for (const [method, path, body] of requests) {
				const res = await signedRequest(method, path, body, { env: { BACKHAUL_MODEL_OWNERS: value } });
				expect(res.status, value).toBe(503);
				expect(await errorOf(res), value).toMatchObject({ code: "model_owners_invalid", message: expect.stringContaining(names) });
			}
		}
	});
});

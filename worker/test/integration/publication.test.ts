/**
 * The threat model of docs/publication.md, one attack per test: each test
 * fails when its defence is taken out. Keys and scopes are the suite's
 * BACKHAUL_PUBLISHERS (test/keys.ts):
 *
 *   test-admin       group test      any namespace, any region, any host
 *   cluster-us-east  group prod      ml, search / us-east / us-east.gpu.example.com, *.us-east.gpu.example.com
 *   us-east-b        group prod      ml / us-east / us-east.gpu.example.com
 *   cluster-eu-west  group prod      ml / eu-west / *.eu-west.gpu.example.com
 *   tenant-b         group tenant-b  team-b / any region / *.team-b.example.net
 */
import { describe, expect, it } from "vitest";
import { encodeBase64 } from "../../src/signature";
import { chat, getRoute, KEYS, listRoutes, makeRoute, nextSequence, publish, routePath, signedRequest, uid, upstream, userMessage, type SignOptions } from "../helpers";
import type { Route } from "../../src/route";

type ErrorBody = { message: string; type: string; code: string; param: string | null };
const errorOf = async (res: Response) => ((await res.json()) as { error: ErrorBody }).error;
const put = (route: Route, opts: SignOptions = {}) => signedRequest("PUT", routePath(route), JSON.stringify(route), opts);
const del = (route: Route, sequence: number, opts: SignOptions = {}) => signedRequest("DELETE", routePath(route), JSON.stringify({ sequence }), opts);
const nothingAt = async (route: Route) => expect(await getRoute(route)).toEqual({ route: null, tombstone: null });

const usEastRoute = (extra: Partial<Route> = {}) =>
	makeRoute({ namespace: "ml", name: uid("pub"), region: "us-east", model: uid("pub-model-"), endpoint: "https://us-east.gpu.example.com", ...extra });
const teamBRoute = (extra: Partial<Route> = {}) =>
	makeRoute({ namespace: "team-b", name: uid("pub"), region: "us-east", model: uid("pub-model-"), endpoint: "https://gpu.team-b.example.net", ...extra });

describe("scope: a key writes only its namespaces and regions", () => {
	it("refuses a key scoped to us-east writing eu-west (403 out_of_scope), and the table is unchanged", async () => {
		const route = usEastRoute({ region: "eu-west" });
		const before = await listRoutes();
		const res = await put(route, { key: KEYS.usEast });
		expect(res.status).toBe(403);
		expect(await errorOf(res)).toMatchObject({ code: "out_of_scope", param: "region", message: expect.stringContaining('"eu-west"') });
		expect(await listRoutes()).toEqual(before);
		await nothingAt(route);
	});

	it("refuses a namespace outside the key's scope", async () => {
		const route = usEastRoute({ namespace: "default" });
		const res = await put(route, { key: KEYS.usEast });
		expect(res.status).toBe(403);
		expect(await errorOf(res)).toMatchObject({ code: "out_of_scope", param: "namespace" });
		await nothingAt(route);
	});

	it("refuses DELETE and the single-route GET outside the scope, and the route stays", async () => {
		const route = usEastRoute({ region: "eu-west", endpoint: "https://gpu1.eu-west.gpu.example.com" });
		await publish(route, { key: KEYS.euWest });
		const delRes = await del(route, route.sequence + 1, { key: KEYS.usEast });
		expect(delRes.status).toBe(403);
		expect((await errorOf(delRes)).code).toBe("out_of_scope");
		const getRes = await signedRequest("GET", routePath(route), "", { key: KEYS.usEast });
		expect(getRes.status).toBe(403);
		expect((await errorOf(getRes)).code).toBe("out_of_scope");
		expect((await getRoute(route)).route).toMatchObject({ sequence: route.sequence, keyId: KEYS.euWest.id });
	});

	it("lists only the routes inside the caller's scope", async () => {
		const mine = usEastRoute();
		const eu = usEastRoute({ region: "eu-west", endpoint: "https://gpu1.eu-west.gpu.example.com" });
		const other = makeRoute({ name: uid("pub"), model: uid("pub-model-") });
		await publish(mine, { key: KEYS.usEast });
		await publish(eu, { key: KEYS.euWest });
		await publish(other);
		const seen = await listRoutes({ key: KEYS.usEast });
		expect(seen.map((r) => r.name)).toContain(mine.name);
		expect(seen.map((r) => r.name)).not.toContain(eu.name);
		expect(seen.map((r) => r.name)).not.toContain(other.name);
		for (const r of seen) {
			expect(["ml", "search"]).toContain(r.namespace);
			expect(r.region).toBe("us-east");
		}
		const all = (await listRoutes()).map((r) => r.name);
		expect(all).toEqual(expect.arrayContaining([mine.name, eu.name, other.name]));
	});
});

describe("ownership: a served model and a route key belong to one owner", () => {
	it("refuses namespace B publishing namespace A's model (409 model_owned naming the owner), and nothing changes", async () => {
		const theirs = usEastRoute();
		await publish(theirs, { key: KEYS.usEast });
		const hijack = teamBRoute({ model: theirs.model, location: { latitude: 51.5, longitude: -0.1 } });
		const res = await put(hijack, { key: KEYS.tenantB });
		expect(res.status).toBe(409);
		expect(await errorOf(res)).toMatchObject({ code: "model_owned", param: "model", message: expect.stringContaining("prod/ml") });
		await nothingAt(hijack);
		// The same group in another namespace is another owner too.
		const sameGroup = usEastRoute({ namespace: "search", model: theirs.model });
		const res2 = await put(sameGroup, { key: KEYS.usEast });
		expect(res2.status).toBe(409);
		expect((await errorOf(res2)).message).toContain("prod/ml");
		// Another cluster of the owning group in the owning namespace may publish it.
		await publish(usEastRoute({ model: theirs.model }), { key: KEYS.usEastB });
	});

	it("keeps the claim after the owner's routes are withdrawn", async () => {
		const theirs = usEastRoute();
		await publish(theirs, { key: KEYS.usEast });
		expect((await del(theirs, theirs.sequence + 1, { key: KEYS.usEast })).status).toBe(204);
		const res = await put(teamBRoute({ model: theirs.model }), { key: KEYS.tenantB });
		expect(res.status).toBe(409);
		expect((await errorOf(res)).code).toBe("model_owned");
	});

	it("follows BACKHAUL_MODEL_OWNERS over the first publisher, and a handed-over model stays handed over", async () => {
		// The suite's BACKHAUL_MODEL_OWNERS gives "handed-to-team-b" to tenant-b/team-b.
		const early = makeRoute({ name: uid("pub"), model: "handed-to-team-b" });
		const refused = await put(early);
		expect(refused.status).toBe(409);
		expect((await errorOf(refused)).message).toContain("tenant-b/team-b");
		await publish(teamBRoute({ model: "handed-to-team-b" }), { key: KEYS.tenantB });

		// A model first published by prod/ml, handed to team B by configuration.
		const theirs = usEastRoute();
		await publish(theirs, { key: KEYS.usEast });
		const handover = { env: { BACKHAUL_MODEL_OWNERS: JSON.stringify({ [theirs.model]: "tenant-b/team-b" }) } };
		await publish(teamBRoute({ model: theirs.model }), { key: KEYS.tenantB, ...handover });
		const old = await put({ ...theirs, sequence: nextSequence() }, { key: KEYS.usEast, ...handover });
		expect(old.status).toBe(409);
		expect((await errorOf(old)).message).toContain("tenant-b/team-b");
		// The entry removed (the suite's configuration): team B still owns it.
		const after = await put({ ...theirs, sequence: nextSequence() }, { key: KEYS.usEast });
		expect(after.status).toBe(409);
		await publish(teamBRoute({ model: theirs.model }), { key: KEYS.tenantB });
	});

	it("refuses another group writing or deleting a route key it did not write (409 route_owned); a refused write claims nothing", async () => {
		const theirs = teamBRoute();
		await publish(theirs, { key: KEYS.tenantB });
		const model = uid("pub-model-");
		const takeover = await put({ ...theirs, model, sequence: nextSequence() });
		expect(takeover.status).toBe(409);
		expect(await errorOf(takeover)).toMatchObject({ code: "route_owned", message: expect.stringContaining('"tenant-b"') });
		const delRes = await del(theirs, nextSequence());
		expect(delRes.status).toBe(409);
		expect((await errorOf(delRes)).code).toBe("route_owned");
		expect((await getRoute(theirs)).route).toMatchObject({ model: theirs.model, keyId: KEYS.tenantB.id });
		// The refused PUT did not claim its model for test/team-b.
		await publish(teamBRoute({ model }), { key: KEYS.tenantB });
		// A tombstone is owned too.
		expect((await del(theirs, nextSequence(), { key: KEYS.tenantB })).status).toBe(204);
		const onTombstone = await put({ ...theirs, model: uid("pub-model-"), sequence: nextSequence() });
		expect(onTombstone.status).toBe(409);
		expect((await errorOf(onTombstone)).code).toBe("route_owned");
	});
});

describe("endpoints: a key points routes only at its hosts", () => {
	it("refuses a foreign endpoint host (403 endpoint_not_allowed) and accepts the key's own", async () => {
		const cases: [string, number][] = [
			["https://us-east.gpu.example.com", 403],
			["https://team-b.example.net", 403], // *.team-b.example.net does not match the apex
			["https://evilteam-b.example.net", 403],
			["https://gpu.team-b.example.net.evil.com", 403],
			["http://127.0.0.1:8080", 403],
			["https://gpu.team-b.example.net", 200],
			["https://a.b.TEAM-B.example.net:8443/prefix", 200],
		];
		for (const [endpoint, status] of cases) {
			const route = teamBRoute({ endpoint });
			const res = await put(route, { key: KEYS.tenantB });
			expect(res.status, endpoint).toBe(status);
			if (status === 403) {
				expect(await errorOf(res), endpoint).toMatchObject({ code: "endpoint_not_allowed", param: "endpoint" });
				await nothingAt(route);
			}
		}
		for (const [endpoint, status] of [
			["https://us-east.gpu.example.com", 200],
			["https://pod-1.us-east.gpu.example.com", 200],
			["https://evil-us-east.gpu.example.com", 403],
			["https://gpu.example.com", 403],
		] as const) {
			expect((await put(usEastRoute({ endpoint }), { key: KEYS.usEast })).status, endpoint).toBe(status);
		}
	});
});

describe("clocks and ordering", () => {
	it("refuses a publishedAt beyond 300 s of the Worker's clock (400 clock_skew)", async () => {
		const now = Date.now();
		for (const at of [now + 301_000, now - 301_000, Date.parse("9999-12-31T23:59:59Z")]) {
			const route = makeRoute({ name: uid("pub"), model: uid("pub-model-"), publishedAt: new Date(at).toISOString() });
			const res = await put(route);
			expect(res.status, route.publishedAt).toBe(400);
			expect(await errorOf(res)).toMatchObject({ code: "clock_skew", param: "publishedAt" });
			await nothingAt(route);
		}
		await publish(makeRoute({ name: uid("pub"), model: uid("pub-model-"), publishedAt: new Date(now + 290_000).toISOString() }));
	});

	it("expires a route ttlSeconds after the Worker received it, even when its publishedAt claims later", async () => {
		const receivedAt = Date.now() - 70_000;
		const name = uid("pub");
		const route = makeRoute({
			name,
			model: uid("pub-model-"),
			endpoint: upstream("ok", `${name}-us-east`),
			publishedAt: new Date(receivedAt + 290_000).toISOString(), // claims to be newer than the Worker's clock then
			ttlSeconds: 60,
		});
		const res = await publish(route, { nowMs: receivedAt });
		expect(((await res.json()) as { route: { expiresAt: string } }).route.expiresAt).toBe(new Date(receivedAt + 60_000).toISOString());
		expect((await getRoute(route)).route).toMatchObject({ expired: true });
		const answer = await chat({ model: route.model, messages: userMessage("Hi") });
		expect(answer.status).toBe(503);
		expect((await errorOf(answer)).code).toBe("no_live_region");
	});

	it("refuses a replayed identical PUT (409 stale_sequence)", async () => {
		const route = makeRoute({ name: uid("pub"), model: uid("pub-model-") });
		const timestamp = Math.floor(Date.now() / 1000);
		expect((await put(route, { timestamp })).status).toBe(200);
		// Ed25519 is deterministic: the same request bytes, signature included.
		const replay = await put(route, { timestamp });
		expect(replay.status).toBe(409);
		expect(await errorOf(replay)).toMatchObject({ code: "stale_sequence", param: "sequence", message: expect.stringContaining(String(route.sequence)) });
	});

	it("refuses an older PUT replayed after a DELETE (409), and the route stays deleted", async () => {
		const route = makeRoute({ name: uid("pub"), model: uid("pub-model-") });
		const timestamp = Math.floor(Date.now() / 1000);
		expect((await put(route, { timestamp })).status).toBe(200);
		expect((await del(route, route.sequence + 1)).status).toBe(204);
		const replay = await put(route, { timestamp });
		expect(replay.status).toBe(409);
		expect(await errorOf(replay)).toMatchObject({ code: "stale_sequence", message: expect.stringContaining("tombstone") });
		const state = await getRoute(route);
		expect(state.route).toBeNull();
		expect(state.tombstone?.sequence).toBe(route.sequence + 1);
		expect((await listRoutes()).some((r) => r.name === route.name)).toBe(false);
	});

	it("orders two publishers with skewed clocks (within the window) by sequence, and expires from the Worker's clock", async () => {
		const now = Date.now();
		const ahead = now + 250_000;
		const behind = now - 250_000;
		const at = (ms: number) => ({ timestamp: Math.floor(ms / 1000), publishedAt: new Date(ms).toISOString().replace(/\.\d+Z$/, "Z") });
		const route = usEastRoute({ sequence: 1000, publishedAt: at(ahead).publishedAt });
		expect((await put(route, { key: KEYS.usEast, timestamp: at(ahead).timestamp })).status).toBe(200);
		// The other cluster's clock is 500 s behind the first's, but its write is the later one.
		const later = { ...route, sequence: 1001, readyReplicas: 1, publishedAt: at(behind).publishedAt };
		const res = await put(later, { key: KEYS.usEastB, timestamp: at(behind).timestamp });
		expect(res.status).toBe(200);
		const view = ((await res.json()) as { route: { receivedAt: string; expiresAt: string } }).route;
		expect(Math.abs(Date.parse(view.receivedAt) - Date.now())).toBeLessThan(5_000);
		expect(Date.parse(view.expiresAt)).toBe(Date.parse(view.receivedAt) + route.ttlSeconds * 1000);
		// The first cluster's next write below that sequence, with its clock ahead, is refused…
		const stale = await put({ ...route, sequence: 1001, readyReplicas: 2 }, { key: KEYS.usEast, timestamp: at(ahead).timestamp });
		expect(stale.status).toBe(409);
		expect((await errorOf(stale)).code).toBe("stale_sequence");
		expect((await getRoute(route)).route).toMatchObject({ sequence: 1001, readyReplicas: 1, keyId: KEYS.usEastB.id });
		// …and, as the operator recovers (GET, then stored + 1), accepted.
		const stored = (await getRoute(route, { key: KEYS.usEast })).route!.sequence;
		expect((await put({ ...route, sequence: stored + 1, readyReplicas: 2 }, { key: KEYS.usEast, timestamp: at(ahead).timestamp })).status).toBe(200);
		expect((await getRoute(route)).route).toMatchObject({ sequence: 1002, readyReplicas: 2, keyId: KEYS.usEast.id });
	});
});

describe("key rotation", () => {
	async function newKey(id: string) {
		const pair = (await crypto.subtle.generateKey({ name: "Ed25519" }, true, ["sign", "verify"])) as CryptoKeyPair;
		const raw = new Uint8Array((await crypto.subtle.exportKey("raw", pair.publicKey)) as ArrayBuffer);
		return { id, privateKey: pair.privateKey, publicKey: encodeBase64(raw) };
	}

	it("accepts two keys of one group at once, then only the new one once the old leaves the configuration", async () => {
		const group = uid("rot");
		const oldKey = await newKey(`${group}-old`);
		const newer = await newKey(`${group}-new`);
		const entry = (k: { id: string; publicKey: string }) => ({ id: k.id, publicKey: k.publicKey, group, namespaces: ["rotation"], regions: ["us-east"] });
		const both = { env: { BACKHAUL_PUBLISHERS: JSON.stringify([entry(oldKey), entry(newer)]) } };
		const onlyNew = { env: { BACKHAUL_PUBLISHERS: JSON.stringify([entry(newer)]) } };
		const route = makeRoute({ namespace: "rotation", name: uid("rot"), region: "us-east", model: uid("rot-model-") });

		await publish(route, { key: oldKey, ...both });
		await publish({ ...route, sequence: nextSequence() }, { key: newer, ...both });
		expect((await getRoute(route, { key: newer, ...both })).route).toMatchObject({ keyId: newer.id, owner: `${group}/rotation` });
		await publish({ ...route, sequence: nextSequence() }, { key: oldKey, ...both });

		const gone = await put({ ...route, sequence: nextSequence() }, { key: oldKey, ...onlyNew });
		expect(gone.status).toBe(401);
		expect((await errorOf(gone)).code).toBe("unknown_key");
		await publish({ ...route, sequence: nextSequence() }, { key: newer, ...onlyNew });
		expect((await getRoute(route, { key: newer, ...onlyNew })).route).toMatchObject({ keyId: newer.id });
	});
});

/**
 * Leases (docs/publication.md, "Leases"): one signed renewal keeps every
 * route its key last wrote live, a lapsed lease lets them expire, a renewal
 * revives nothing, and the answer's count and digest are the Worker's own.
 * Each test has its own publisher key (freshPublishers), so leases never
 * cross tests; time is the Worker's clock passed to the admin handler
 * (`nowMs`), as in publication.test.ts.
 */
import { describe, expect, it } from "vitest";
import { leaseDigest } from "../../src/lease";
import { routeKey, type Route } from "../../src/route";
import {
	chat,
	freshPublishers,
	getRoute,
	makeRoute,
	nextSequence,
	publish,
	renewLease,
	routePath,
	signedRequest,
	uid,
	upstream,
	userMessage,
	type LeaseAnswer,
	type SignOptions,
} from "../helpers";

type ErrorBody = { message: string; type: string; code: string; param: string | null };
const errorOf = async (res: Response) => ((await res.json()) as { error: ErrorBody }).error;
const iso = (ms: number) => new Date(ms).toISOString();
const EMPTY = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/** A route published at `atMs` (the Worker's clock) with `ttlSeconds`, pointing at a simulated region that answers. */
async function publishedAt(atMs: number, ttlSeconds: number, opts: SignOptions, extra: Partial<Route> = {}): Promise<Route> {
	const name = uid("lease");
	const route = makeRoute({ name, model: uid("lease-model-"), endpoint: upstream("ok", `${name}-us-east`), publishedAt: iso(atMs), ttlSeconds, ...extra });
	await publish(route, { ...opts, nowMs: atMs });
	return route;
}

async function renewed(keyId: string, sequence: number, digest: string, routes: number, opts: SignOptions): Promise<LeaseAnswer["lease"]> {
	const res = await renewLease(keyId, { sequence, routes, digest }, opts);
	expect(res.status, await res.clone().text()).toBe(200);
	return ((await res.json()) as LeaseAnswer).lease;
}

describe("leases", () => {
	it("keeps a key's routes live past their own TTL, in the views and on the request path", async () => {
		const [k] = await freshPublishers([{ prefix: "lease" }]);
		const t0 = Date.now() - 100_000;
		const a = await publishedAt(t0, 60, k!.opts);
		const b = await publishedAt(t0 + 1_000, 60, k!.opts);
		const held = [
			{ key: routeKey(a), sequence: a.sequence },
			{ key: routeKey(b), sequence: b.sequence },
		];
		const digest = await leaseDigest(held);
		const sequence = nextSequence();
		const lease = await renewed(k!.id, sequence, digest, 2, { ...k!.opts, nowMs: t0 + 50_000 });
		expect(lease).toEqual({ keyId: k!.id, sequence, renewedAt: iso(t0 + 50_000), routes: 2, digest });

		// Both routes' own TTL ended 40 s ago; the lease keeps them to t0 + 110 s.
		const view = (await getRoute(a, k!.opts)).route!;
		expect(view).not.toHaveProperty("expired");
		expect(view).toMatchObject({ receivedAt: iso(t0), expiresAt: iso(t0 + 110_000) });
		const list = ((await (await signedRequest("GET", "/admin/v1/routes", "", k!.opts)).json()) as { routes: { name: string; expired?: true }[] }).routes;
		expect(list.find((r) => r.name === a.name)).not.toHaveProperty("expired");
		const answer = await chat({ model: a.model, messages: userMessage("Hi") });
		expect(answer.status).toBe(200);
		expect(answer.headers.get("x-backhaul-region")).toBe("us-east");
	});

	it("lets the routes expire ttlSeconds after the last renewal when the lease lapses", async () => {
		const [k] = await freshPublishers([{ prefix: "lapse" }]);
		const t0 = Date.now() - 200_000;
		const route = await publishedAt(t0, 60, k!.opts);
		const digest = await leaseDigest([{ key: routeKey(route), sequence: route.sequence }]);
		await renewed(k!.id, nextSequence(), digest, 1, { ...k!.opts, nowMs: t0 + 40_000 });
		// Live just before t0 + 100 s (the renewal + 60 s), expired from then on.
		expect((await getRoute(route, { ...k!.opts, nowMs: t0 + 99_000 })).route).not.toHaveProperty("expired");
		expect((await getRoute(route, k!.opts)).route).toMatchObject({ expired: true, expiresAt: iso(t0 + 100_000) });
		const answer = await chat({ model: route.model, messages: userMessage("Hi") });
		expect(answer.status).toBe(503);
		expect((await errorOf(answer)).code).toBe("no_live_region");
		// Nothing live is left to the key, whatever the operator believes it holds.
		const late = await renewed(k!.id, nextSequence(), digest, 1, k!.opts);
		expect(late).toMatchObject({ routes: 0, digest: EMPTY });
	});

	it("never revives a route that had expired before the renewal", async () => {
		const [k] = await freshPublishers([{ prefix: "revive" }]);
		const t0 = Date.now() - 200_000;
		const dead = await publishedAt(t0, 60, k!.opts);
		const live = await publishedAt(t0 + 90_000, 60, k!.opts);
		// At t0 + 100 s the first route has been dead for 40 s; the second is live.
		const lease = await renewed(k!.id, nextSequence(), EMPTY, 0, { ...k!.opts, nowMs: t0 + 100_000 });
		expect(lease).toMatchObject({ routes: 1, digest: await leaseDigest([{ key: routeKey(live), sequence: live.sequence }]) });
		await renewed(k!.id, nextSequence(), EMPTY, 0, { ...k!.opts, nowMs: t0 + 140_000 });
		expect((await getRoute(dead, { ...k!.opts, nowMs: t0 + 140_000 })).route).toMatchObject({ expired: true, expiresAt: iso(t0 + 60_000) });
		expect((await getRoute(live, { ...k!.opts, nowMs: t0 + 140_000 })).route).toMatchObject({ expiresAt: iso(t0 + 200_000) });
		expect((await getRoute(live, { ...k!.opts, nowMs: t0 + 140_000 })).route).not.toHaveProperty("expired");
		// A PUT brings it back, as the operator does when the digests differ.
		await publish({ ...dead, sequence: nextSequence(), publishedAt: iso(Date.now()) }, k!.opts);
		expect((await getRoute(dead, k!.opts)).route).not.toHaveProperty("expired");
	});

	it("refuses a replayed or lower sequence (409 stale_sequence), and the stored lease stays", async () => {
		const [k] = await freshPublishers([{ prefix: "replay" }]);
		const t0 = Date.now() - 30_000;
		const route = await publishedAt(t0, 60, k!.opts);
		const sequence = nextSequence();
		const timestamp = Math.floor(Date.now() / 1000);
		const body = { sequence, routes: 1, digest: EMPTY };
		expect((await renewLease(k!.id, body, { ...k!.opts, timestamp })).status).toBe(200);
		// The same bytes, signature included (Ed25519 is deterministic).
		const replay = await renewLease(k!.id, body, { ...k!.opts, timestamp });
		expect(replay.status).toBe(409);
		expect(await errorOf(replay)).toMatchObject({ code: "stale_sequence", param: "sequence", message: expect.stringContaining(`lease's ${sequence}`) });
		const lower = await renewLease(k!.id, { ...body, sequence: sequence - 1 }, k!.opts);
		expect(lower.status).toBe(409);
		// The refused renewals renewed nothing: the route expires from the first one (now) + 60 s.
		const expiresAt = Date.parse((await getRoute(route, k!.opts)).route!.expiresAt);
		expect(expiresAt).toBeGreaterThanOrEqual(timestamp * 1000 + 60_000);
		expect(expiresAt).toBeLessThan(Date.now() + 60_000 + 1);
	});

	it("refuses a key renewing another key's lease (403 out_of_scope), even in its own group", async () => {
		const [k, other] = await freshPublishers([{ prefix: "mine", group: uid("grp") }, { prefix: "theirs" }]);
		const res = await renewLease(other!.id, { sequence: nextSequence(), routes: 0, digest: EMPTY }, k!.opts);
		expect(res.status).toBe(403);
		expect(await errorOf(res)).toMatchObject({ code: "out_of_scope", param: "keyId", message: expect.stringContaining(other!.id) });
		// No lease was stored for the other key: its own first renewal, with a low sequence, is accepted.
		await renewed(other!.id, 1, EMPTY, 0, other!.opts);
		// The path names a key id that is no key at all: the same 403.
		expect((await renewLease("no-such-key", { sequence: nextSequence(), routes: 0, digest: EMPTY }, k!.opts)).status).toBe(403);
	});

	it("answers the Worker's own count and digest: equal to the operator's when both hold the same set, different when not", async () => {
		const [k] = await freshPublishers([{ prefix: "digest" }]);
		const now = Date.now();
		const routes = [await publishedAt(now, 60, k!.opts), await publishedAt(now, 60, k!.opts, { region: "eu-west" }), await publishedAt(now, 60, k!.opts)];
		const lines = routes.map((r) => ({ key: routeKey(r), sequence: r.sequence }));
		const same = await leaseDigest(lines);
		expect(await renewed(k!.id, nextSequence(), same, 3, k!.opts)).toMatchObject({ routes: 3, digest: same });

		// The operator holds a newer sequence of one route than the Worker has (its PUT was lost).
		const newer = await leaseDigest([{ ...lines[0]!, sequence: lines[0]!.sequence + 1 }, ...lines.slice(1)]);
		const answer = await renewed(k!.id, nextSequence(), newer, 3, k!.opts);
		expect(answer).toMatchObject({ routes: 3, digest: same });
		expect(answer.digest).not.toBe(newer);

		// Withdrawn by DELETE: the Worker's set no longer has it.
		expect((await signedRequest("DELETE", routePath(routes[2]!), JSON.stringify({ sequence: nextSequence() }), k!.opts)).status).toBe(204);
		expect(await renewed(k!.id, nextSequence(), same, 3, k!.opts)).toMatchObject({ routes: 2, digest: await leaseDigest(lines.slice(0, 2)) });
		// Routes another key wrote are not this key's.
		const [other] = await freshPublishers([{ prefix: "digest-other" }]);
		expect(await renewed(other!.id, nextSequence(), EMPTY, 0, other!.opts)).toMatchObject({ routes: 0, digest: EMPTY });
	});

	it("validates the body (400 invalid_json, invalid_lease naming the field) and signs it", async () => {
		const [k] = await freshPublishers([{ prefix: "lease-body" }]);
		const cases: [string, string, string | null][] = [
			["{not json", "invalid_json", null],
			["[]", "invalid_lease", "body"],
			[JSON.stringify({ sequence: 0, routes: 0, digest: EMPTY }), "invalid_lease", "sequence"],
			[JSON.stringify({ sequence: 5, routes: -1, digest: EMPTY }), "invalid_lease", "routes"],
			[JSON.stringify({ sequence: 5, routes: 0, digest: EMPTY.toUpperCase() }), "invalid_lease", "digest"],
			[JSON.stringify({ sequence: 5, routes: 0 }), "invalid_lease", "digest"],
		];
		for (const [body, code, param] of cases) {
			const res = await renewLease(k!.id, body, k!.opts);
			expect(res.status, body).toBe(400);
			expect(await errorOf(res), body).toMatchObject({ code, param });
		}
		const tampered = await renewLease(k!.id, { sequence: nextSequence(), routes: 0, digest: EMPTY }, { ...k!.opts, signedBody: "{}" });
		expect(tampered.status).toBe(401);
		const get = await signedRequest("GET", `/admin/v1/leases/${k!.id}`, "", k!.opts);
		expect(get.status).toBe(405);
		expect(get.headers.get("allow")).toBe("PUT");
		expect((await signedRequest("PUT", `/admin/v1/leases/${k!.id}/x`, "{}", k!.opts)).status).toBe(404);
	});
});

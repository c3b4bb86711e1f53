/**
 * The fleet view (docs/publication.md, "The fleet view"): every region of
 * every model the caller's group owns, nothing of another group's, no token,
 * and a version an operator polls cheaply with If-None-Match.
 */
import { describe, expect, it } from "vitest";
import type { FleetView } from "../../src/fleet";
import { freshPublishers, makeRoute, nextSequence, publish, renewLease, routePath, signedRequest, TEST_UPSTREAM_TOKEN, uid, type SignOptions } from "../helpers";

const iso = (ms: number) => new Date(ms).toISOString();
const EMPTY = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/** The signed GET /admin/v1/fleet, conditional when `ifNoneMatch` is given. */
const fleet = (opts: SignOptions, ifNoneMatch?: string): Promise<Response> =>
	signedRequest("GET", "/admin/v1/fleet", "", ifNoneMatch === undefined ? opts : { ...opts, headers: { "if-none-match": ifNoneMatch } });

describe("the fleet view", () => {
	it("shows every region of the group's models, written by any of its keys, and nothing of another group's or any token", async () => {
		const group = uid("fleet");
		const [east, west, stranger] = await freshPublishers([
			{ prefix: "fleet-east", group, namespaces: ["ml"], regions: ["us-east"] },
			{ prefix: "fleet-west", group, namespaces: ["ml"], regions: ["eu-west"] },
			{ prefix: "fleet-other", namespaces: ["ml"] },
		]);
		const model = uid("fleet-model-");
		const name = uid("fleet");
		const t0 = Date.now();
		await publish(makeRoute({ namespace: "ml", name, region: "us-east", model, readyReplicas: 2 }), { ...east!.opts, nowMs: t0 });
		await publish(makeRoute({ namespace: "ml", name, region: "eu-west", model, readyReplicas: 1 }), { ...west!.opts, nowMs: t0 });
		const theirs = uid("fleet-model-");
		await publish(makeRoute({ namespace: "ml", name: uid("fleet"), model: theirs }), stranger!.opts);

		const res = await fleet({ ...east!.opts, nowMs: t0 });
		expect(res.status).toBe(200);
		const text = await res.text();
		expect(text).not.toContain(TEST_UPSTREAM_TOKEN);
		const view = JSON.parse(text) as FleetView;
		expect(res.headers.get("etag")).toBe(`"${view.version}"`);
		expect(Object.keys(view.models)).toEqual([model]);
		expect(view.models[model]).toEqual([
			{ namespace: "ml", name, region: "eu-west", keyId: west!.id, readyReplicas: 1, receivedAt: iso(t0), expiresAt: iso(t0 + 60_000), expired: false },
			{ namespace: "ml", name, region: "us-east", keyId: east!.id, readyReplicas: 2, receivedAt: iso(t0), expiresAt: iso(t0 + 60_000), expired: false },
		]);
		expect(view).not.toHaveProperty("truncated");
		// The other group sees its own model only; the other key of the group sees the same view.
		const other = (await (await fleet(stranger!.opts)).json()) as FleetView;
		expect(Object.keys(other.models)).toEqual([theirs]);
		const fromWest = (await (await fleet({ ...west!.opts, nowMs: t0 })).json()) as FleetView;
		expect(fromWest).toEqual(view);
	});

	it("answers 304 with no body to a matching If-None-Match, also across a renewal, and a new version after a write or an expiry", async () => {
		const [k] = await freshPublishers([{ prefix: "fleet-etag" }]);
		const route = makeRoute({ name: uid("fleet"), model: uid("fleet-model-"), ttlSeconds: 60 });
		const t0 = Date.now();
		await publish(route, { ...k!.opts, nowMs: t0 });
		const first = await fleet({ ...k!.opts, nowMs: t0 });
		const etag = first.headers.get("etag")!;
		const { version } = (await first.json()) as FleetView;
		expect(etag).toBe(`"${version}"`);

		const unchanged = await fleet({ ...k!.opts, nowMs: t0 + 1_000 }, etag);
		expect(unchanged.status).toBe(304);
		expect(unchanged.headers.get("etag")).toBe(etag);
		expect(await unchanged.text()).toBe("");
		expect((await fleet({ ...k!.opts, nowMs: t0 + 1_000 }, `W/"nope", ${etag}`)).status).toBe(304);
		expect((await fleet({ ...k!.opts, nowMs: t0 + 1_000 }, '"another"')).status).toBe(200);

		// A renewal moves expiresAt only: same version (documented), the 200 shows the later expiry.
		expect((await renewLease(k!.id, { sequence: nextSequence(), routes: 1, digest: EMPTY }, { ...k!.opts, nowMs: t0 + 30_000 })).status).toBe(200);
		expect((await fleet({ ...k!.opts, nowMs: t0 + 31_000 }, etag)).status).toBe(304);
		const renewed = (await (await fleet({ ...k!.opts, nowMs: t0 + 31_000 })).json()) as FleetView;
		expect(renewed.version).toBe(version);
		expect(renewed.models[route.model]![0]!.expiresAt).toBe(iso(t0 + 90_000));

		// A write changes it.
		await publish({ ...route, sequence: nextSequence(), readyReplicas: 1 }, { ...k!.opts, nowMs: t0 + 32_000 });
		const written = await fleet({ ...k!.opts, nowMs: t0 + 33_000 }, etag);
		expect(written.status).toBe(200);
		const after = (await written.json()) as FleetView;
		expect(after.version).not.toBe(version);
		expect(after.models[route.model]![0]).toMatchObject({ readyReplicas: 1, receivedAt: iso(t0 + 32_000) });
		const writtenTag = written.headers.get("etag")!;
		expect((await fleet({ ...k!.opts, nowMs: t0 + 34_000 }, writtenTag)).status).toBe(304);

		// So does an expiry, with nothing written (the route, rewritten at t0 + 32 s, dies at t0 + 92 s).
		const expired = await fleet({ ...k!.opts, nowMs: t0 + 92_000 }, writtenTag);
		expect(expired.status).toBe(200);
		const dead = (await expired.json()) as FleetView;
		expect(dead.version).not.toBe(after.version);
		expect(dead.models[route.model]![0]).toMatchObject({ expired: true, expiresAt: iso(t0 + 92_000) });

		// A withdrawal too.
		expect((await signedRequest("DELETE", routePath(route), JSON.stringify({ sequence: nextSequence() }), k!.opts)).status).toBe(204);
		const withdrawn = await fleet(k!.opts, expired.headers.get("etag")!);
		expect(withdrawn.status).toBe(200);
		expect(((await withdrawn.json()) as FleetView).models).toEqual({});
	});

	it("follows BACKHAUL_MODEL_OWNERS over the claim", async () => {
		const [owner, claimant] = await freshPublishers([{ prefix: "fleet-owner", namespaces: ["ml"] }, { prefix: "fleet-claim", namespaces: ["ml"] }]);
		const model = uid("fleet-model-");
		await publish(makeRoute({ namespace: "ml", name: uid("fleet"), model }), claimant!.opts);
		expect(Object.keys(((await (await fleet(claimant!.opts)).json()) as FleetView).models)).toEqual([model]);
		const handed = { BACKHAUL_MODEL_OWNERS: JSON.stringify({ [model]: `${owner!.group}/ml` }) };
		const asOwner = (await (await fleet({ ...owner!.opts, env: { ...owner!.opts.env, ...handed } })).json()) as FleetView;
		expect(Object.keys(asOwner.models)).toEqual([model]);
		const asClaimant = (await (await fleet({ ...claimant!.opts, env: { ...claimant!.opts.env, ...handed } })).json()) as FleetView;
		expect(asClaimant.models).toEqual({});
	});

	it("is signed: unsigned or unknown keys are refused, and only GET is allowed", async () => {
		const { SELF } = await import("cloudflare:test");
		expect((await SELF.fetch("https://router.test/admin/v1/fleet")).status).toBe(401);
		const [k] = await freshPublishers([{ prefix: "fleet-method" }]);
		const post = await signedRequest("POST", "/admin/v1/fleet", "", k!.opts);
		expect(post.status).toBe(405);
		expect(post.headers.get("allow")).toBe("GET");
	});
});

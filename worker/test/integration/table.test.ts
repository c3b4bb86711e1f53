/**
 * The route table at fleet size (docs/publication.md, "The table at fleet
 * size"): the alarm's cleanup and its bounded batches, the upgrade from the
 * previous schema, the per-publisher cap, and the admin list's pages. The
 * alarm runs on the Durable Object's clock: tests publish in the Worker's
 * past (`nowMs`) and run the alarm with runDurableObjectAlarm or by calling
 * it, never by waiting.
 */
import { env, evictDurableObject, runDurableObjectAlarm, runInDurableObject } from "cloudflare:test";
import { describe, expect, it } from "vitest";
import type { FleetView } from "../../src/fleet";
import type { StoredView } from "../../src/route";
import { EXPIRED_ROUTE_RETENTION_MS, LEASE_RETENTION_MS, routeTable, SWEEP_BATCH, TOMBSTONE_TTL_MS, type RouteTable } from "../../src/table";
import { freshPublishers, getRoute, makeRoute, nextSequence, publish, renewLease, routePath, signedRequest, storedRoute, uid, type SignOptions } from "../helpers";

type ErrorBody = { message: string; type: string; code: string; param: string | null };
const errorOf = async (res: Response) => ((await res.json()) as { error: ErrorBody }).error;
const iso = (ms: number) => new Date(ms).toISOString();
const EMPTY = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
const put = (route: ReturnType<typeof makeRoute>, opts: SignOptions) => signedRequest("PUT", routePath(route), JSON.stringify(route), opts);

/** Rows of `table` at `key` in the suite's route table, read from its storage. */
const rowsAt = (table: "route_entries" | "tombstones" | "leases", column: string, value: string) =>
	runInDurableObject(routeTable(env), (_: RouteTable, state) => state.storage.sql.exec(`SELECT COUNT(*) AS n FROM ${table} WHERE ${column} = ?`, value).one().n as number);

describe("the alarm's cleanup", () => {
	it("is armed by a write, by the route's expiry plus the retention at the latest", async () => {
		const route = makeRoute({ name: uid("arm"), model: uid("arm-model-") });
		await publish(route);
		const alarm = await runInDurableObject(routeTable(env), (_: RouteTable, state) => state.storage.getAlarm());
		expect(alarm).not.toBeNull();
		expect(alarm!).toBeLessThanOrEqual(Date.now() + route.ttlSeconds * 1000 + EXPIRED_ROUTE_RETENTION_MS);
	});

	it("keeps an expired route for the retention, then deletes it leaving a tombstone that refuses a replay", async () => {
		const [k] = await freshPublishers([{ prefix: "sweep" }]);
		// Received so long ago that it expired more than the retention ago.
		const then = Date.now() - EXPIRED_ROUTE_RETENTION_MS - 120_000;
		const gone = makeRoute({ name: uid("sweep"), model: uid("sweep-model-"), publishedAt: iso(then), ttlSeconds: 60 });
		await publish(gone, { ...k!.opts, nowMs: then });
		// Expired, but within the retention: kept, answered as expired.
		const recent = Date.now() - 120_000;
		const kept = makeRoute({ name: uid("sweep"), model: uid("sweep-model-"), publishedAt: iso(recent), ttlSeconds: 60 });
		await publish(kept, { ...k!.opts, nowMs: recent });

		await runDurableObjectAlarm(routeTable(env)); // false when it already ran by itself: either way it has run
		const state = await getRoute(gone, k!.opts);
		expect(state.route).toBeNull();
		expect(state.tombstone).toMatchObject({ sequence: gone.sequence });
		expect(Date.parse(state.tombstone!.expiresAt) - Date.parse(state.tombstone!.deletedAt)).toBe(TOMBSTONE_TTL_MS);
		expect((await getRoute(kept, k!.opts)).route).toMatchObject({ expired: true });

		// The PUT replayed (its signature's time, when it was still valid): refused by the tombstone.
		const replay = await put(gone, { ...k!.opts, nowMs: then + 1_000 });
		expect(replay.status).toBe(409);
		expect(await errorOf(replay)).toMatchObject({ code: "stale_sequence", message: expect.stringContaining("tombstone") });
		// The operator's next write (a higher sequence) brings the route back.
		await publish({ ...gone, sequence: nextSequence(), publishedAt: iso(Date.now()) }, k!.opts);
		expect((await getRoute(gone, k!.opts)).route).toMatchObject({ sequence: expect.any(Number) });
	});

	it("deletes expired tombstones and forgotten leases, and keeps a lease whose key still holds routes", async () => {
		const [withRoutes, idle] = await freshPublishers([{ prefix: "gc-held" }, { prefix: "gc-idle" }]);
		const old = Date.now() - LEASE_RETENTION_MS - 10_000;
		const deleted = makeRoute({ name: uid("gc"), model: uid("gc-model-"), publishedAt: iso(old), ttlSeconds: 60 });
		await publish(deleted, { ...withRoutes!.opts, nowMs: old });
		expect((await signedRequest("DELETE", routePath(deleted), JSON.stringify({ sequence: nextSequence() }), { ...withRoutes!.opts, nowMs: old })).status).toBe(204);
		expect((await renewLease(idle!.id, { sequence: nextSequence(), routes: 0, digest: EMPTY }, { ...idle!.opts, nowMs: old })).status).toBe(200);
		const live = makeRoute({ name: uid("gc"), model: uid("gc-model-") });
		await publish(live, withRoutes!.opts);
		expect((await renewLease(withRoutes!.id, { sequence: nextSequence(), routes: 1, digest: EMPTY }, { ...withRoutes!.opts, nowMs: old })).status).toBe(200);

		await runDurableObjectAlarm(routeTable(env));
		expect(await rowsAt("tombstones", "key", `${deleted.namespace}/${deleted.name}/${deleted.region}`)).toBe(0);
		expect(await rowsAt("leases", "key_id", idle!.id)).toBe(0);
		expect(await rowsAt("leases", "key_id", withRoutes!.id)).toBe(1);
		expect(await rowsAt("route_entries", "key_id", withRoutes!.id)).toBe(1);
	});

	it("deletes at most SWEEP_BATCH routes a run and runs again at once while more are due", async () => {
		// A table of its own, seeded with 1,100 routes expired past the retention.
		const stub = env.ROUTES.get(env.ROUTES.idFromName(uid("sweep-batch")));
		const counts = await runInDurableObject(stub, async (instance: RouteTable, state) => {
			const sql = state.storage.sql;
			const old = Date.now() - EXPIRED_ROUTE_RETENTION_MS - 3_600_000;
			for (let i = 0; i < 1100; i++) {
				const r = storedRoute(makeRoute({ name: `r${i}`, model: `m${i % 7}`, sequence: i + 1 }), old);
				sql.exec(
					`INSERT INTO route_entries (key, namespace, name, region, model, edge_model, key_id, grp, sequence, ready_replicas, received_at_ms, ttl_seconds, lapsed_at_ms, route)
					 VALUES (?, ?, ?, ?, ?, NULL, ?, ?, ?, ?, ?, ?, NULL, ?)`,
					`${r.namespace}/${r.name}/${r.region}`, r.namespace, r.name, r.region, r.model, r.keyId, r.group, r.sequence, r.readyReplicas, old, r.ttlSeconds, JSON.stringify(r),
				);
			}
			const count = (t: string) => sql.exec(`SELECT COUNT(*) AS n FROM ${t}`).one().n as number;
			const out: { routes: number; tombstones: number; alarmDue: boolean }[] = [];
			for (let run = 0; run < 3; run++) {
				await instance.alarm();
				const alarm = await state.storage.getAlarm();
				out.push({ routes: count("route_entries"), tombstones: count("tombstones"), alarmDue: alarm !== null && alarm <= Date.now() });
			}
			const after = await state.storage.getAlarm();
			return { out, after };
		});
		expect(SWEEP_BATCH).toBe(500);
		expect(counts.out).toEqual([
			{ routes: 600, tombstones: 500, alarmDue: true },
			{ routes: 100, tombstones: 1000, alarmDue: true },
			{ routes: 0, tombstones: 1100, alarmDue: false },
		]);
		// Next: the tombstones' expiry.
		expect(counts.after!).toBeGreaterThan(Date.now() + TOMBSTONE_TTL_MS - 60_000);
	});
});

describe("upgrading from the previous schema", () => {
	it("keeps every route of a v2 table (published_routes) across the redeploy, indexed, with its sequence and expiry", async () => {
		const stub = env.ROUTES.get(env.ROUTES.idFromName(uid("migration")));
		const now = Date.now();
		const a = storedRoute(makeRoute({ name: uid("mig"), model: uid("mig-model-"), edgeModel: "@cf/meta/llama-3.2-1b-instruct" }), now - 5_000);
		const b = storedRoute(makeRoute({ name: uid("mig"), model: a.model, region: "eu-west", readyReplicas: 1 }), now - 7_000);
		const c = storedRoute(makeRoute({ name: uid("mig"), model: uid("mig-model-") }), now - 9_000);
		// The storage as the previous Worker left it: its tables only.
		await runInDurableObject(stub, (_: RouteTable, state) => {
			const sql = state.storage.sql;
			sql.exec("DROP TABLE route_entries");
			sql.exec("DROP TABLE leases");
			sql.exec("CREATE TABLE published_routes (key TEXT PRIMARY KEY, sequence INTEGER NOT NULL, grp TEXT NOT NULL, route TEXT NOT NULL)");
			for (const r of [a, b, c]) sql.exec("INSERT INTO published_routes VALUES (?, ?, ?, ?)", `${r.namespace}/${r.name}/${r.region}`, r.sequence, r.group, JSON.stringify(r));
		});
		// The redeploy: a new instance, whose constructor migrates.
		await runInDurableObject(stub, (_: RouteTable, state) => state.storage.deleteAlarm());
		await evictDurableObject(stub);

		const tables = await runInDurableObject(stub, (_: RouteTable, state) =>
			state.storage.sql.exec<{ name: string }>("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").toArray().map((t) => t.name),
		);
		expect(tables).toContain("route_entries");
		expect(tables).not.toContain("published_routes");
		// The previous Worker set no alarm; the new instance arms one for the migrated rows.
		const alarm = await runInDurableObject(stub, (_: RouteTable, state) => state.storage.getAlarm());
		expect(alarm).toBe(Math.min(...[a, b, c].map((r) => r.receivedAtMs + r.ttlSeconds * 1000)) + EXPIRED_ROUTE_RETENTION_MS);
		const one = await stub.get(a, now);
		expect(one.route).toMatchObject({ sequence: a.sequence, receivedAtMs: a.receivedAtMs, upstreamToken: a.upstreamToken, keyId: a.keyId });
		const model = await stub.modelRoutes(a.model);
		expect(model.routes.map((r) => r.name).sort()).toEqual([a.name, b.name].sort());
		expect((await stub.modelRoutes(c.model)).routes).toHaveLength(1);
		expect((await stub.modelRoutes("@cf/meta/llama-3.2-1b-instruct")).edgeServed).toBe(true);
		// The migrated columns order writes and judge expiry as before.
		const stale = await stub.put({ route: { ...a, receivedAtMs: now }, configuredOwner: null, maxRoutesPerKey: 5000, nowMs: now });
		expect(stale).toMatchObject({ ok: false, code: "stale_sequence", stored: a.sequence });
		const catalog = await stub.catalog();
		expect(catalog.find((r) => r.name === b.name)).toMatchObject({ readyReplicas: 1, receivedAtMs: b.receivedAtMs, ttlSeconds: b.ttlSeconds, model: a.model });
		// A second start finds nothing to migrate and keeps everything.
		await evictDurableObject(stub);
		expect((await stub.modelRoutes(a.model)).routes).toHaveLength(2);
	});
});

describe("MAX_ROUTES_PER_PUBLISHER", () => {
	it("accepts a key's new route up to the cap, refuses the next with 403 route_limit_exceeded giving the cap, and always accepts updates", async () => {
		const [k, sibling] = await freshPublishers([{ prefix: "cap", group: uid("cap-group") }, { prefix: "cap-b" }], { MAX_ROUTES_PER_PUBLISHER: "3" });
		const route = () => makeRoute({ name: uid("cap"), model: uid("cap-model-") });
		const held = [route(), route()];
		for (const r of held) await publish(r, k!.opts);
		// cap - 1 held: a new one is accepted.
		const third = route();
		expect((await put(third, k!.opts)).status).toBe(200);
		held.push(third);
		// cap held: a new one is refused, and nothing is stored.
		const fourth = route();
		const refused = await put(fourth, k!.opts);
		expect(refused.status).toBe(403);
		expect(await errorOf(refused)).toMatchObject({ code: "route_limit_exceeded", message: expect.stringContaining("3 live routes") });
		expect(await getRoute(fourth, k!.opts)).toEqual({ route: null, tombstone: null });
		// An update at the cap passes.
		expect((await put({ ...held[0]!, sequence: nextSequence(), readyReplicas: 1 }, k!.opts)).status).toBe(200);
		// Another key has its own count.
		expect((await put(fourth, sibling!.opts)).status).toBe(200);
		// A withdrawn route frees its place.
		expect((await signedRequest("DELETE", routePath(held[1]!), JSON.stringify({ sequence: nextSequence() }), k!.opts)).status).toBe(204);
		expect((await put(route(), k!.opts)).status).toBe(200);
	});

	it("does not count expired routes", async () => {
		const [k] = await freshPublishers([{ prefix: "cap-exp" }], { MAX_ROUTES_PER_PUBLISHER: "1" });
		const then = Date.now() - 120_000;
		await publish(makeRoute({ name: uid("cap"), model: uid("cap-model-"), publishedAt: iso(then), ttlSeconds: 60 }), { ...k!.opts, nowMs: then });
		expect((await put(makeRoute({ name: uid("cap"), model: uid("cap-model-") }), k!.opts)).status).toBe(200);
		expect((await put(makeRoute({ name: uid("cap"), model: uid("cap-model-") }), k!.opts)).status).toBe(403);
	});
});

describe("the admin list's pages", () => {
	it("pages through the caller's scope in key order with after and limit", async () => {
		const ns = uid("page").toLowerCase();
		const [k] = await freshPublishers([{ prefix: "page", namespaces: [ns] }]);
		const names = ["a", "b", "c", "d", "e"].map((n) => `${n}-${uid("p")}`);
		for (const name of names) await publish(makeRoute({ namespace: ns, name, model: uid("page-model-") }), k!.opts);
		await publish(makeRoute({ name: uid("page-elsewhere"), model: uid("page-model-") }));
		const page = async (query: string) => {
			// The signature covers the path without its query string.
			const res = await signedRequest("GET", `/admin/v1/routes${query}`, "", { ...k!.opts, signedPath: "/admin/v1/routes" });
			expect(res.status, query).toBe(200);
			return (await res.json()) as { routes: StoredView[]; next: string | null };
		};
		const first = await page("?limit=2");
		expect(first.routes.map((r) => r.name)).toEqual(names.slice(0, 2));
		expect(first.next).toBe(`${ns}/${names[1]}/us-east`);
		const second = await page(`?limit=2&after=${encodeURIComponent(first.next!)}`);
		expect(second.routes.map((r) => r.name)).toEqual(names.slice(2, 4));
		const last = await page(`?limit=2&after=${encodeURIComponent(second.next!)}`);
		expect(last).toMatchObject({ next: null });
		expect(last.routes.map((r) => r.name)).toEqual(names.slice(4));
		expect((await page("")).routes.map((r) => r.name)).toEqual(names);
		for (const bad of ["?limit=0", "?limit=1001", "?limit=x", "?after=Not/A/Key!", "?after=a/b"]) {
			const res = await signedRequest("GET", `/admin/v1/routes${bad}`, "", { ...k!.opts, signedPath: "/admin/v1/routes" });
			expect(res.status, bad).toBe(400);
		}
	});
});

describe("at fleet size", () => {
	it("reads one model's rows out of 10,000 routes, and answers one group's 1,000 models × 3 regions in one bounded view", async () => {
		const stub = env.ROUTES.get(env.ROUTES.idFromName(uid("fleet-size")));
		const regions = ["us-east", "eu-west", "ap-south"];
		const models = 3334;
		const result = await runInDurableObject(stub, async (instance: RouteTable, state) => {
			const sql = state.storage.sql;
			const now = Date.now();
			for (let m = 0; m < models; m++) {
				const model = `m${String(m).padStart(5, "0")}`;
				// The first 1,000 models are group "big"'s, the rest another group's.
				const group = m < 1000 ? "big" : "other";
				sql.exec("INSERT INTO model_owners (model, owner, claimed_at_ms) VALUES (?, ?, ?)", model, `${group}/ml`, now);
				for (const region of regions) {
					const r = { ...storedRoute(makeRoute({ namespace: "ml", name: model, region, model }), now), keyId: `${group}-${region}`, group };
					sql.exec(
						`INSERT INTO route_entries (key, namespace, name, region, model, edge_model, key_id, grp, sequence, ready_replicas, received_at_ms, ttl_seconds, lapsed_at_ms, route)
						 VALUES (?, ?, ?, ?, ?, NULL, ?, ?, ?, ?, ?, ?, NULL, ?)`,
						`ml/${model}/${region}`, "ml", model, region, model, r.keyId, group, r.sequence, r.readyReplicas, now, r.ttlSeconds, JSON.stringify(r),
					);
				}
			}
			const total = sql.exec("SELECT COUNT(*) AS n FROM route_entries").one().n as number;
			const miss = instance.modelRoutes("m01234");
			const fleet = await instance.fleet({ group: "big", configuredOwners: {}, ifNoneMatch: [], nowMs: now });
			const again = await instance.fleet({ group: "big", configuredOwners: {}, ifNoneMatch: [fleet.version], nowMs: now + 1 });
			return { total, miss: { routes: miss.routes.length, rowsRead: miss.rowsRead }, fleet, again };
		});
		expect(result.total).toBe(models * regions.length);
		// SQLite's count: the model's 3 rows through its index (and one index step past them), not the 10,002 a whole-table read touches.
		expect(result.miss.routes).toBe(3);
		expect(result.miss.rowsRead).toBeGreaterThanOrEqual(3);
		expect(result.miss.rowsRead).toBeLessThanOrEqual(6);
		expect(result.fleet.notModified).toBe(false);
		const view = result.fleet as FleetView & { notModified: false };
		expect(Object.keys(view.models)).toHaveLength(1000);
		expect(Object.values(view.models).every((rs) => rs.length === 3)).toBe(true);
		expect(view).not.toHaveProperty("truncated");
		const { notModified: _, ...body } = view;
		expect(JSON.stringify(body).length).toBeLessThan(1_000_000);
		expect(result.again).toEqual({ notModified: true, version: view.version });
	});
});

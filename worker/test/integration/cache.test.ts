/**
 * The isolate's per-model copies of the route table (src/route-cache.ts): a
 * warm isolate reads one model's routes from the Durable Object at most once
 * per ROUTE_CACHE_TTL_MS, a change written elsewhere shows within it, and a
 * cache miss reads that model's rows only, never the fleet's.
 */
import { env } from "cloudflare:test";
import { describe, expect, it } from "vitest";
import { cacheTtlMs, invalidateAll, loadModel } from "../../src/route-cache";
import type { ModelRoutes } from "../../src/table";
import { makeRoute, nextSequence, publish, putDirect, routePath, signedRequest, uid } from "../helpers";

/** The real ROUTES namespace, recording each modelRoutes() call (its model and the rows it read) and each catalog() call. */
function countingEnv() {
	const reads: { model: string; rowsRead: number; routes: number }[] = [];
	const catalogs = { n: 0 };
	const ROUTES = {
		idFromName: (name: string) => env.ROUTES.idFromName(name),
		get: (id: DurableObjectId) => {
			const stub = env.ROUTES.get(id);
			return {
				modelRoutes: async (model: string) => {
					const result = (await stub.modelRoutes(model)) as ModelRoutes;
					reads.push({ model, rowsRead: result.rowsRead, routes: result.routes.length });
					return result;
				},
				catalog: () => {
					catalogs.n++;
					return stub.catalog();
				},
			};
		},
	};
	return { env: { ...env, ROUTES } as unknown as Env, reads, catalogs };
}

describe("route cache", () => {
	it("reads a model once per TTL and sees another isolate's write after it", async () => {
		const { env: counted, reads } = countingEnv();
		const ttl = cacheTtlMs(counted);
		expect(ttl).toBe(5000);
		invalidateAll();
		const model = uid("cache-model-");
		const t0 = Date.now();
		await loadModel(counted, model, t0);
		expect(reads.length).toBe(1);

		// A write that does not go through this isolate (as from another one).
		const route = makeRoute({ name: uid("cache"), model });
		await putDirect(route);

		for (let i = 0; i < 20; i++) {
			const copy = await loadModel(counted, model, t0 + i * 100);
			expect(copy.routes.some((r) => r.name === route.name)).toBe(false);
		}
		expect(reads.length).toBe(1);
		const later = await loadModel(counted, model, t0 + ttl);
		expect(later.routes.some((r) => r.name === route.name)).toBe(true);
		expect(reads.length).toBe(2);
	});

	it("reads only the requested model's rows on a miss, however many other models the table holds", async () => {
		const { env: counted, reads, catalogs } = countingEnv();
		invalidateAll();
		const model = uid("cache-model-");
		const others = Array.from({ length: 60 }, () => makeRoute({ name: uid("cache-other"), model: uid("cache-other-model-") }));
		for (const r of others) await putDirect(r);
		for (const region of ["us-east", "eu-west"]) await putDirect(makeRoute({ name: uid("cache"), model, region }));

		const copy = await loadModel(counted, model);
		expect(copy.routes.map((r) => r.model)).toEqual([model, model]);
		expect(reads).toEqual([{ model, rowsRead: expect.any(Number), routes: 2 }]);
		// SQLite's own count of the rows the read touched: the model's two
		// routes through the index (and their leases), not the 60 others.
		expect(reads[0]!.rowsRead).toBeGreaterThanOrEqual(2);
		expect(reads[0]!.rowsRead).toBeLessThanOrEqual(4);
		expect(catalogs.n).toBe(0);
		// Another model is another read of its own rows.
		await loadModel(counted, others[0]!.model);
		expect(reads.map((r) => r.model)).toEqual([model, others[0]!.model]);
		expect(reads[1]!.rowsRead).toBeLessThanOrEqual(2);
	});

	it("drops, after a write through this isolate, the copies of the models it touched and no others", async () => {
		const { env: counted, reads } = countingEnv();
		invalidateAll();
		const model = uid("cache-model-");
		const untouched = uid("cache-model-");
		const t0 = Date.now();
		await loadModel(counted, model, t0);
		await loadModel(counted, untouched, t0);
		expect(reads.map((r) => r.model)).toEqual([model, untouched]);
		// Published through the admin API, in this isolate: the model's copy goes at once.
		const route = makeRoute({ name: uid("cache"), model });
		await publish(route);
		expect((await loadModel(counted, model, t0 + 100)).routes.map((r) => r.name)).toEqual([route.name]);
		await loadModel(counted, untouched, t0 + 100);
		expect(reads.map((r) => r.model)).toEqual([model, untouched, model]);
		// So does a withdrawal's, and a model moved away from (its old model's copy goes too).
		const moved = { ...route, sequence: nextSequence(), model: uid("cache-model-") };
		await publish(moved);
		expect((await loadModel(counted, model, t0 + 200)).routes).toEqual([]);
		expect(reads.at(-1)).toMatchObject({ model, routes: 0 });
		await signedRequest("DELETE", routePath(moved));
		expect((await loadModel(counted, moved.model, t0 + 300)).routes).toEqual([]);
	});

	it("caps the TTL at 10 s so changes show within the contract's 10 s", () => {
		expect(cacheTtlMs({ ...env, ROUTE_CACHE_TTL_MS: "60000" })).toBe(10_000);
		expect(cacheTtlMs({ ...env, ROUTE_CACHE_TTL_MS: "0" })).toBe(0);
		expect(cacheTtlMs({ ...env, ROUTE_CACHE_TTL_MS: "junk" })).toBe(5000);
	});
});

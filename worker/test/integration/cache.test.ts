/**
 * The route table cache: a warm isolate reads the Durable Object at most once
 * per ROUTE_CACHE_TTL_MS, and a change written elsewhere shows within it.
 */
import { env } from "cloudflare:test";
import { describe, expect, it } from "vitest";
import { cacheTtlMs, invalidateRoutes, loadRoutes } from "../../src/table";
import { makeRoute, putDirect, uid } from "../helpers";

/** The real ROUTES namespace, counting list() calls on its stubs. */
function countingEnv() {
	const reads = { n: 0 };
	const ROUTES = {
		idFromName: (name: string) => env.ROUTES.idFromName(name),
		get: (id: DurableObjectId) => {
			const stub = env.ROUTES.get(id);
			return {
				list: () => {
					reads.n++;
					return stub.list();
				},
			};
		},
	};
	return { env: { ...env, ROUTES } as unknown as Env, reads };
}

describe("route cache", () => {
	it("reads storage once per TTL and sees another isolate's write after it", async () => {
		const { env: counted, reads } = countingEnv();
		const ttl = cacheTtlMs(counted);
		expect(ttl).toBe(5000);
		invalidateRoutes();
		const t0 = Date.now();
		await loadRoutes(counted, t0);
		expect(reads.n).toBe(1);

		// A write that does not go through this isolate (as from another one).
		const route = makeRoute({ name: uid("cache"), model: uid("cache-model-") });
		await putDirect(route);

		for (let i = 0; i < 20; i++) {
			const routes = await loadRoutes(counted, t0 + i * 100);
			expect(routes.some((r) => r.name === route.name)).toBe(false);
		}
		expect(reads.n).toBe(1);
		const later = await loadRoutes(counted, t0 + ttl);
		expect(later.some((r) => r.name === route.name)).toBe(true);
		expect(reads.n).toBe(2);
	});

	it("caps the TTL at 10 s so changes show within the contract's 10 s", () => {
		expect(cacheTtlMs({ ...env, ROUTE_CACHE_TTL_MS: "60000" })).toBe(10_000);
		expect(cacheTtlMs({ ...env, ROUTE_CACHE_TTL_MS: "0" })).toBe(0);
		expect(cacheTtlMs({ ...env, ROUTE_CACHE_TTL_MS: "junk" })).toBe(5000);
	});
});

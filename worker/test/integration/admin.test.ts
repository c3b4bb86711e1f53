import { describe, expect, it } from "vitest";
import { listRoutes, makeRoute, publish, routePath, signedRequest, uid } from "../helpers";

const fresh = (extra = {}) => makeRoute({ name: uid("adm"), ...extra });
const errorOf = async (res: Response) => ((await res.json()) as { error: { message: string; type: string; code: string } }).error;

describe("admin API", () => {
	it("stores a signed route, lists it, and deletes it idempotently", async () => {
		const route = fresh();
		const put = await publish(route);
		expect(await put.json()).toEqual({ route });
		expect((await listRoutes()).find((r) => r.name === route.name)).toEqual(route);

		const del = await signedRequest("DELETE", routePath(route));
		expect(del.status).toBe(204);
		expect((await listRoutes()).some((r) => r.name === route.name)).toBe(false);
		expect((await signedRequest("DELETE", routePath(route))).status).toBe(204);
	});

	it("lists expired routes with expired: true", async () => {
		const route = fresh({ publishedAt: "2026-01-01T00:00:00Z", ttlSeconds: 10 });
		await publish(route);
		expect((await listRoutes()).find((r) => r.name === route.name)).toEqual({ ...route, expired: true });
	});

	it("rejects bad, stale, tampered and misdirected signatures with 401 and changes nothing", async () => {
		const route = fresh();
		const path = routePath(route);
		const body = JSON.stringify(route);
		const now = Math.floor(Date.now() / 1000);
		const cases: [string, Response][] = [
			["wrong secret", await signedRequest("PUT", path, body, { secret: "not-the-secret" })],
			["malformed", await signedRequest("PUT", path, body, { signature: "sha256=abc" })],
			["stale", await signedRequest("PUT", path, body, { timestamp: now - 301 })],
			["future", await signedRequest("PUT", path, body, { timestamp: now + 301 })],
			["tampered body", await signedRequest("PUT", path, body, { signedBody: body.replace("us-east", "us-west") })],
			["signed for another path", await signedRequest("PUT", path, body, { signedPath: routePath({ ...route, region: "eu-west" }) })],
		];
		for (const [what, res] of cases) {
			expect(res.status, what).toBe(401);
			expect((await errorOf(res)).type, what).toBe("authentication_error");
		}
		const unsigned = await SELFfetch("PUT", path, body);
		expect(unsigned.status).toBe(401);
		expect((await listRoutes()).some((r) => r.name === route.name)).toBe(false);
		expect((await signedRequest("GET", "/admin/v1/routes", "", { timestamp: now - 400 })).status).toBe(401);
	});

	it("accepts a replay inside the window only while it is not older than what is stored", async () => {
		const route = fresh({ publishedAt: "2026-11-23T07:00:00Z", ttlSeconds: 3600 });
		await publish(route);
		// The same write again (a replay with the same publishedAt) is idempotent.
		expect((await signedRequest("PUT", routePath(route), JSON.stringify(route))).status).toBe(200);
		await publish({ ...route, publishedAt: "2026-11-23T07:00:20Z", readyReplicas: 1 });
		// An older write arriving late: 409, and the newer route stays.
		const late = await signedRequest("PUT", routePath(route), JSON.stringify({ ...route, readyReplicas: 2 }));
		expect(late.status).toBe(409);
		expect(await errorOf(late)).toMatchObject({ code: "stale_route", message: expect.stringContaining("2026-11-23T07:00:20Z") });
		expect((await listRoutes()).find((r) => r.name === route.name)).toMatchObject({ readyReplicas: 1, publishedAt: "2026-11-23T07:00:20Z" });
	});

	it("rejects invalid bodies with 400 naming the field, and path/body disagreement", async () => {
		const route = fresh();
		const path = routePath(route);
		const notJson = await signedRequest("PUT", path, "{not json");
		expect(notJson.status).toBe(400);
		const badField = await signedRequest("PUT", path, JSON.stringify({ ...route, ttlSeconds: 5 }));
		expect(badField.status).toBe(400);
		expect((await errorOf(badField)).message).toContain("ttlSeconds");
		const elsewhere = await signedRequest("PUT", routePath({ ...route, region: "eu-west" }), JSON.stringify(route));
		expect(elsewhere.status).toBe(400);
		expect((await errorOf(elsewhere)).message).toContain("region");
		const badPath = await signedRequest("PUT", "/admin/v1/routes/Default/x/y", JSON.stringify(route));
		expect(badPath.status).toBe(400);
		expect((await listRoutes()).some((r) => r.name === route.name)).toBe(false);
	});

	it("rejects bodies over 64 KiB with 413", async () => {
		const route = fresh();
		const big = JSON.stringify({ ...route, padding: "x".repeat(64 * 1024) });
		const res = await signedRequest("PUT", routePath(route), big);
		expect(res.status).toBe(413);
		expect((await listRoutes()).some((r) => r.name === route.name)).toBe(false);
	});

	it("answers unknown admin paths and methods with OpenAI-shaped errors", async () => {
		expect((await signedRequest("POST", "/admin/v1/routes")).status).toBe(405);
		expect((await signedRequest("GET", "/admin/v1/routes/a/b")).status).toBe(404);
	});
});

import { SELF } from "cloudflare:test";
function SELFfetch(method: string, path: string, body: string) {
	return SELF.fetch(`https://router.test${path}`, { method, body, headers: { "content-type": "application/json" } });
}

import { describe, expect, it } from "vitest";
import { checkRouteHint, KeyConfigError, parseKeys } from "../../src/auth";
import { ApiError } from "../../src/errors";

describe("parseKeys", () => {
	it("reads a comma-separated list as plain keys", () => {
		expect(parseKeys(" a , b,,c ")).toEqual([
			{ key: "a", routeHint: false },
			{ key: "b", routeHint: false },
			{ key: "c", routeHint: false },
		]);
		expect(parseKeys("")).toEqual([]);
		expect(parseKeys("  ")).toEqual([]);
	});

	it("reads a JSON array of keys and {key, routeHint}", () => {
		expect(parseKeys(' [ "a", {"key": "b"}, {"key": "c", "routeHint": true}, {"key": "d", "routeHint": false} ] ')).toEqual([
			{ key: "a", routeHint: false },
			{ key: "b", routeHint: false },
			{ key: "c", routeHint: true },
			{ key: "d", routeHint: false },
		]);
		expect(parseKeys("[]")).toEqual([]);
	});

	it("refuses a malformed JSON form rather than guessing", () => {
		for (const raw of ["[", '{"key":"a"}', "[1]", '[""]', '[{"key":""}]', '[{"key":"a","routeHint":"true"}]', '[{"key":"a","route_hint":true}]', "[null]", "[[]]"]) {
			expect(() => parseKeys(raw), raw).toThrow(KeyConfigError);
		}
	});
});

describe("checkRouteHint", () => {
	it("lets through callers without a hint or with the right, and 403s the rest", () => {
		expect(() => checkRouteHint({ keyed: true, routeHint: false }, false)).not.toThrow();
		expect(() => checkRouteHint({ keyed: true, routeHint: true }, true)).not.toThrow();
		expect(() => checkRouteHint({ keyed: false, routeHint: true }, true)).not.toThrow();
		for (const keyed of [true, false]) {
			try {
				checkRouteHint({ keyed, routeHint: false }, true);
				expect.unreachable();
			} catch (err) {
				expect(err).toBeInstanceOf(ApiError);
				expect((err as ApiError).status).toBe(403);
				expect((err as ApiError).code).toBe("route_hint_forbidden");
			}
		}
	});
});

import { describe, expect, it } from "vitest";
import { validateRoute, ValidationError } from "../../src/route";
import { ROUTE_EXAMPLE } from "../route-schema";

// The example route of docs/publication.md (its token written out).
const example = ROUTE_EXAMPLE;

const field = (mutate: (r: any) => void): string => {
	const r = structuredClone(example) as any;
	mutate(r);
	try {
		validateRoute(r);
	} catch (e) {
		if (e instanceof ValidationError) return e.field;
		throw e;
	}
	return "valid";
};

describe("validateRoute", () => {
	it("accepts the documented example unchanged", () => {
		expect(validateRoute(example)).toEqual(example);
	});
	it("accepts a null edge model, loopback http and a trailing slash", () => {
		expect(field((r) => (r.edgeModel = null))).toBe("valid");
		expect(validateRoute({ ...example, endpoint: "http://127.0.0.1:8080/" }).endpoint).toBe("http://127.0.0.1:8080");
		expect(field((r) => (r.endpoint = "http://localhost:9000"))).toBe("valid");
	});
	it("names the failing field", () => {
		expect(field((r) => (r.namespace = "Default"))).toBe("namespace");
		expect(field((r) => (r.name = "a".repeat(64)))).toBe("name");
		expect(field((r) => (r.region = "-us"))).toBe("region");
		expect(field((r) => (r.model = "bad model"))).toBe("model");
		expect(field((r) => (r.model = ""))).toBe("model");
		expect(field((r) => (r.endpoint = "http://gpu.example.com"))).toBe("endpoint");
		expect(field((r) => (r.endpoint = "not a url"))).toBe("endpoint");
		expect(field((r) => (r.location.latitude = 91))).toBe("location.latitude");
		expect(field((r) => (r.location.longitude = -181))).toBe("location.longitude");
		expect(field((r) => delete r.location)).toBe("location");
		expect(field((r) => (r.replicas = -1))).toBe("replicas");
		expect(field((r) => (r.readyReplicas = 1.5))).toBe("readyReplicas");
		expect(field((r) => (r.routing.heavyPromptTokens = -1))).toBe("routing.heavyPromptTokens");
		expect(field((r) => (r.routing.requestTimeoutMs = 0))).toBe("routing.requestTimeoutMs");
		expect(field((r) => (r.routing.firstByteTimeoutMs = "15000"))).toBe("routing.firstByteTimeoutMs");
		expect(field((r) => (r.routing.failoverAttempts = 0))).toBe("routing.failoverAttempts");
		expect(field((r) => (r.edgeModel = 3))).toBe("edgeModel");
		expect(field((r) => (r.generation = -1))).toBe("generation");
		expect(field((r) => (r.publishedAt = "yesterday"))).toBe("publishedAt");
		expect(field((r) => (r.publishedAt = "2026-11-23T07:00:00"))).toBe("publishedAt");
		expect(field((r) => (r.ttlSeconds = 9))).toBe("ttlSeconds");
		expect(field((r) => (r.ttlSeconds = 3601))).toBe("ttlSeconds");
		expect(field((r) => (r.replicas = 1001))).toBe("replicas");
		expect(field((r) => (r.routing.requestTimeoutMs = 999))).toBe("routing.requestTimeoutMs");
		expect(field((r) => (r.routing.firstByteTimeoutMs = 3_600_001))).toBe("routing.firstByteTimeoutMs");
		expect(field((r) => (r.routing.failoverAttempts = 33))).toBe("routing.failoverAttempts");
		expect(field((r) => (r.routing.heavyMaxTokens = 4_294_967_296))).toBe("routing.heavyMaxTokens");
		expect(field((r) => (r.sequence = 0))).toBe("sequence");
		expect(field((r) => (r.sequence = 2 ** 53))).toBe("sequence");
		expect(field((r) => delete r.sequence)).toBe("sequence");
		expect(field((r) => (r.edgeModel = "@cf/meta llama"))).toBe("edgeModel");
		expect(field((r) => delete r.upstreamToken)).toBe("upstreamToken");
		expect(field((r) => (r.upstreamToken = "short"))).toBe("upstreamToken");
		expect(field((r) => (r.upstreamToken = "x".repeat(15) + " "))).toBe("upstreamToken");
	});
	it("never echoes the token in a validation message", () => {
		const token = "not a token, but secret-ish 0123456789";
		try {
			validateRoute({ ...example, upstreamToken: token });
			expect.unreachable();
		} catch (e) {
			expect(e).toBeInstanceOf(ValidationError);
			expect((e as Error).message).not.toContain(token);
		}
	});
});

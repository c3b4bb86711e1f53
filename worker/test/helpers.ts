import { env, SELF } from "cloudflare:test";
import type { Route, Routing } from "../src/route";
import { sign } from "../src/signature";

export const testEnv = env as Env & { TEST_UPSTREAM: string; TEST_REFUSED: string };
export const SECRET = "test-publish-secret";

let seq = 0;
/** A unique id per call, so tests never share routes, cooldowns or upstream counters. */
export const uid = (prefix = "t") => `${prefix}${Date.now().toString(36)}${(seq++).toString(36)}`;

/** An upstream endpoint of the simulated regions (test/upstream-server.ts). */
export const upstream = (scenario: string, id: string) => `${testEnv.TEST_UPSTREAM}/${scenario}/${id}`;
export const upstreamControl = (what: string, id: string) => fetch(`${testEnv.TEST_UPSTREAM}/control/${what}/${id}`);
export const upstreamCount = async (id: string) => Number(await (await upstreamControl("count", id)).text());

/** The region credential test routes carry; test/upstream-server.ts accepts it. */
export const TEST_UPSTREAM_TOKEN = "test-upstream-token-0123456789";

let sequence = Date.now();
/** A fresh, increasing route sequence number. */
export const nextSequence = () => ++sequence;

export function makeRoute(overrides: Partial<Omit<Route, "routing">> & { routing?: Partial<Routing> } = {}): Route {
	const { routing, ...rest } = overrides;
	return {
		namespace: "default",
		name: "smollm2",
		region: "us-east",
		model: "smollm2-135m",
		endpoint: "https://us-east.gpu.example.com",
		location: { latitude: 39.04, longitude: -77.49 },
		replicas: 2,
		readyReplicas: 2,
		edgeModel: null,
		generation: 1,
		sequence: nextSequence(),
		publishedAt: new Date().toISOString().replace(/\.\d+Z$/, "Z"),
		ttlSeconds: 60,
		upstreamToken: TEST_UPSTREAM_TOKEN,
		...rest,
		routing: {
			heavyPromptTokens: 1024,
			heavyMaxTokens: 512,
			requestTimeoutMs: 10_000,
			firstByteTimeoutMs: 1_000,
			failoverAttempts: 3,
			...routing,
		},
	};
}

export async function signedRequest(
	method: string,
	path: string,
	body = "",
	opts: { timestamp?: number; secret?: string; signature?: string; signedBody?: string; signedPath?: string } = {},
): Promise<Response> {
	const ts = String(opts.timestamp ?? Math.floor(Date.now() / 1000));
	const enc = new TextEncoder();
	const signature =
		opts.signature ?? (await sign(opts.secret ?? SECRET, ts, method, opts.signedPath ?? path, enc.encode(opts.signedBody ?? body)));
	return SELF.fetch(`https://router.test${path}`, {
		method,
		headers: { "x-backhaul-timestamp": ts, "x-backhaul-signature": signature, "content-type": "application/json" },
		body: method === "GET" || method === "DELETE" ? undefined : body,
	});
}

export const routePath = (r: Pick<Route, "namespace" | "name" | "region">) => `/admin/v1/routes/${r.namespace}/${r.name}/${r.region}`;

export async function publish(route: Route): Promise<Response> {
	const res = await signedRequest("PUT", routePath(route), JSON.stringify(route));
	if (res.status !== 200) throw new Error(`publish failed: ${res.status} ${await res.text()}`);
	return res;
}

export async function listRoutes(): Promise<(Route & { expired?: boolean })[]> {
	const res = await signedRequest("GET", "/admin/v1/routes");
	return ((await res.json()) as { routes: (Route & { expired?: boolean })[] }).routes;
}

export function chat(body: unknown, init: RequestInit<CfProperties> & { headers?: Record<string, string> } = {}): Promise<Response> {
	return SELF.fetch("https://router.test/v1/chat/completions", {
		method: "POST",
		...init,
		headers: { "content-type": "application/json", ...(init.headers ?? {}) },
		body: typeof body === "string" ? body : JSON.stringify(body),
	});
}

export const userMessage = (content: string) => [{ role: "user", content }];

/** The SSE `data:` payloads of a whole body. */
export function ssePayloads(text: string): string[] {
	return text
		.split("\n")
		.filter((l) => l.startsWith("data:"))
		.map((l) => l.slice(5).trim());
}

/** Concatenated delta content of an OpenAI SSE body. */
export function sseContent(text: string): string {
	return ssePayloads(text)
		.filter((p) => p !== "[DONE]")
		.map((p) => (JSON.parse(p) as { choices?: { delta?: { content?: string } }[] }).choices?.[0]?.delta?.content ?? "")
		.join("");
}

/**
 * Helpers for the client-facing side's tests (routing, the Worker→region
 * credential, client access): calling the Worker with its own env, deploying
 * a model on simulated regions, reading what a region received.
 */
import { createExecutionContext, env } from "cloudflare:test";
import worker from "../src/index";
import type { Route } from "../src/route";
import { makeRoute, publish, uid, upstream, upstreamControl } from "./helpers";

/** The Worker's fetch with `overrides` on the suite's env: keys, the closed default, the Access token. */
export function callWorker(path: string, init: RequestInit<CfProperties>, overrides: Record<string, unknown>): Promise<Response> {
	// The context is not awaited here: a streamed answer's pump (ctx.waitUntil)
	// runs only as fast as the test reads the body.
	return worker.fetch(
		new Request(`https://router.test${path}`, init) as Request<unknown, IncomingRequestCfProperties>,
		{ ...env, ...overrides } as Env,
		createExecutionContext(),
	);
}

/** POST /v1/chat/completions through callWorker. */
export const chatWith = (body: unknown, overrides: Record<string, unknown>, headers: Record<string, string> = {}, cf?: CfProperties) =>
	callWorker("/v1/chat/completions", { method: "POST", body: JSON.stringify(body), headers: { "content-type": "application/json", ...headers }, cf }, overrides);

export type ErrorBody = { message: string; type: string; code: string; param: string | null };
export const errorOf = async (res: Response) => ((await res.json()) as { error: ErrorBody }).error;

export interface RegionSpec {
	scenario: string;
	latitude: number;
	longitude: number;
	extra?: Partial<Route>;
}

/**
 * Publishes one route per region for a fresh model; returns the model name,
 * the route name and each region's upstream id (for the control endpoints).
 * Regions are named `r{i}-{scenario}`.
 */
export async function deploy(regions: RegionSpec[], routing: Partial<Route["routing"]> = {}) {
	const model = uid("model-");
	const name = uid("md");
	const ids: string[] = [];
	for (const [i, r] of regions.entries()) {
		const region = `r${i}-${r.scenario.toLowerCase()}`;
		const id = `${name}-${region}`;
		ids.push(id);
		await publish(makeRoute({ name, region, model, endpoint: upstream(r.scenario, id), location: { latitude: r.latitude, longitude: r.longitude }, routing, ...r.extra }));
	}
	return { model, name, ids };
}

/** A region near London and one far from it, in that order; requests carry LONDON. */
export const near = (scenario: string, extra?: Partial<Route>): RegionSpec => ({ scenario, latitude: 51, longitude: 0, extra });
export const far = (scenario: string, extra?: Partial<Route>): RegionSpec => ({ scenario, latitude: 0, longitude: 100, extra });
export const LONDON = { latitude: "51.51", longitude: "-0.13" };

/** The headers of every request the simulated region `id` received, oldest first. */
export async function upstreamHeaders(id: string): Promise<Record<string, string | string[] | undefined>[]> {
	return (await (await upstreamControl("headers", id)).json()) as Record<string, string | string[] | undefined>[];
}

/** The path (after `{scenario}/{id}`) of every request the simulated region `id` received, oldest first. */
export async function upstreamPaths(id: string): Promise<string[]> {
	return (await (await upstreamControl("paths", id)).json()) as string[];
}

/** The body of every request the simulated region `id` received, oldest first, parsed. */
export async function upstreamBodies(id: string): Promise<Record<string, unknown>[]> {
	return ((await (await upstreamControl("bodies", id)).json()) as string[]).map((b) => JSON.parse(b) as Record<string, unknown>);
}

/** Once region `id`'s connection closed: how much of a huge body it wrote. */
export async function upstreamSent(id: string): Promise<{ written: number; total: number; finished: boolean }> {
	const res = await upstreamControl("sent", id);
	if (res.status !== 200) throw new Error(`region ${id}'s connection did not close: ${res.status}`);
	return (await res.json()) as { written: number; total: number; finished: boolean };
}

/** The size of the huge scenarios' bodies (HUGE_BYTES in test/upstream-server.ts). */
export const HUGE_BYTES = 128 * 1024 * 1024;

export const chatBody = (model: string, extra: Record<string, unknown> = {}) => ({ model, messages: [{ role: "user", content: "Hello" }], ...extra });

/**
 * The response cache's storage (issue 18): the Workers Cache API
 * (`caches.default`), one synthetic GET URL per key on the Worker's own
 * host, the stored answer as JSON with `Cache-Control: max-age=<ttl>`. The
 * cache is per Cloudflare data centre, and does nothing on *.workers.dev
 * (README, "Response cache"). A failing cache is a miss, never an error.
 */
import { parseCachedAnswer, type CachedAnswer } from "./cached-answer";

/** The synthetic URL an entry lives at. */
export const cacheUrl = (origin: string, key: string): string => `${origin}/__backhaul/response-cache/${key}`;

export async function lookup(url: string): Promise<CachedAnswer | null> {
	try {
		const res = await caches.default.match(url);
		if (!res) return null;
		return parseCachedAnswer(await res.json());
	} catch (err) {
		console.warn("response cache read failed", { error: String(err) });
		return null;
	}
}

export async function store(url: string, answer: CachedAnswer, ttlSeconds: number): Promise<void> {
	try {
		await caches.default.put(
			url,
			new Response(JSON.stringify(answer), { headers: { "content-type": "application/json", "cache-control": `max-age=${ttlSeconds}` } }),
		);
	} catch (err) {
		console.warn("response cache write failed", { error: String(err) });
	}
}

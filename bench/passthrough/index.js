// The floor for bench/routing.mjs: a Worker that only forwards the request
// body to one upstream and streams its answer back, run by the same
// wrangler dev and workerd as the Backhaul Worker. What the Backhaul Worker
// adds beyond this is its own code; what this adds over the upstream
// directly is wrangler dev and workerd.
export default {
	async fetch(request, env) {
		return fetch(`${env.UPSTREAM}/v1/chat/completions`, {
			method: "POST",
			headers: { "content-type": "application/json" },
			body: request.body,
		});
	},
};

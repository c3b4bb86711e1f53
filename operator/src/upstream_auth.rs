//! The Worker → region credential (docs/publication.md, "Worker → region
//! credential"): one Secret per ModelDeployment, `{name}-upstream-auth`, key
//! `tokens`, one token per line. The operator makes it once with a random
//! token and never writes it again, so a rotation is an edit of that Secret;
//! the pods mount it and accept every line, and the first line is what the
//! operator publishes to the Worker.

use base64::Engine as _;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::apply::{ApplyError, ChildConflict, FIELD_MANAGER, controlled_by};
use crate::build::{MANAGED_BY, MODEL_LABEL};
use crate::cache::ChildCache;
use crate::publish::valid_upstream_token;
use crate::validate::ValidatedModelDeployment;

/// Key of the tokens in the Secret.
pub const SECRET_KEY: &str = "tokens";
/// Where the pods mount the Secret.
pub const MOUNT_DIR: &str = "/var/run/backhaul/upstream-auth";

/// `--api-key-file` of the inference server.
pub fn key_file() -> String {
    format!("{MOUNT_DIR}/{SECRET_KEY}")
}

/// Name of the ModelDeployment's credential Secret.
pub fn secret_name(model_deployment: &str) -> String {
    format!("{model_deployment}-upstream-auth")
}

/// A new token: 32 random bytes, base64url without padding (43 characters).
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the system's random source works");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The Secret as first made, holding `token`.
pub fn secret(v: &ValidatedModelDeployment, token: &str) -> Secret {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": secret_name(&v.name),
            "namespace": v.namespace,
            "labels": {
                MODEL_LABEL: v.name,
                "app.kubernetes.io/name": "backhaul-inference",
                "app.kubernetes.io/component": "upstream-auth",
                "app.kubernetes.io/part-of": "backhaul",
                "app.kubernetes.io/managed-by": MANAGED_BY,
            },
            "annotations": {
                "backhaul.dev/description": "Bearer tokens the inference pods accept, one per line; the first is published to the routing Worker. Rotate: add a line, swap, remove (docs/publication.md).",
            },
            "ownerReferences": [v.owner],
        },
        "type": "Opaque",
        "data": {SECRET_KEY: ByteString(format!("{token}\n").into_bytes())},
    }))
    .expect("the built Secret matches k8s-openapi's type")
}

/// The token to publish: the first line of `tokens` that is neither blank nor
/// a `#` comment, as the inference server reads the file.
pub fn published_token(secret: &Secret) -> Result<String, String> {
    let name = format!(
        "{}/{}",
        secret.namespace().unwrap_or_default(),
        secret.name_any()
    );
    let data = secret
        .data
        .as_ref()
        .and_then(|d| d.get(SECRET_KEY))
        .ok_or_else(|| format!("Secret {name} has no key {SECRET_KEY:?}"))?;
    let text = std::str::from_utf8(&data.0)
        .map_err(|_| format!("Secret {name}: {SECRET_KEY} is not UTF-8"))?;
    let first = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .ok_or_else(|| format!("Secret {name}: {SECRET_KEY} holds no token"))?;
    if !valid_upstream_token(first) {
        return Err(format!(
            "Secret {name}: the first token must be 16-512 characters of [A-Za-z0-9._~+/=-]"
        ));
    }
    Ok(first.to_owned())
}

/// What [`ensure`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// The token to publish.
    Token(String),
    /// The Secret is this ModelDeployment's but holds no usable first token.
    Unusable(String),
    /// Another object holds the Secret's name: the pods must not mount it.
    Foreign(ChildConflict),
}

/// Makes the Secret when it does not exist and reads the token to publish.
/// The cache (a watch of the operator's Secrets) answers steady reconciles
/// without a request; a missing Secret costs one read, and a creation.
pub async fn ensure(
    client: &Client,
    cache: &ChildCache,
    v: &ValidatedModelDeployment,
) -> Result<Credential, ApplyError> {
    let name = secret_name(&v.name);
    let api: Api<Secret> = Api::namespaced(client.clone(), &v.namespace);
    let failed = |verb, source| ApplyError {
        verb,
        kind: "Secret",
        namespace: v.namespace.clone(),
        name: name.clone(),
        source,
    };
    let existing = match cache.secret(&v.namespace, &name) {
        Some(s) => Some((*s).clone()),
        None => api.get_opt(&name).await.map_err(|e| failed("get", e))?,
    };
    let existing = match existing {
        Some(s) => s,
        None => {
            let params = PostParams {
                field_manager: Some(FIELD_MANAGER.to_owned()),
                ..PostParams::default()
            };
            match api.create(&params, &secret(v, &new_token())).await {
                Ok(created) => created,
                // Made meanwhile (another replica, a retried reconcile): read it.
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    api.get(&name).await.map_err(|e| failed("get", e))?
                }
                Err(e) => return Err(failed("create", e)),
            }
        }
    };
    if !controlled_by(&existing.metadata, &v.owner.uid) {
        return Ok(Credential::Foreign(ChildConflict {
            kind: "Secret",
            object: format!("{}/{name}", v.namespace),
            holder: crate::apply::holder(&existing.metadata, &v.owner),
        }));
    }
    Ok(match published_token(&existing) {
        Ok(token) => Credential::Token(token),
        Err(message) => Credential::Unusable(message),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::tests::{FIXTURE, validated};

    #[test]
    fn a_new_secret_holds_one_fresh_token_and_belongs_to_the_model_deployment() {
        let v = validated(FIXTURE);
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert!(valid_upstream_token(&a));
        let s = secret(&v, &a);
        assert_eq!(s.name_any(), "smollm2-upstream-auth");
        assert_eq!(
            s.metadata.owner_references.as_ref().unwrap()[0].uid,
            v.owner.uid
        );
        assert_eq!(
            s.labels()
                .get("app.kubernetes.io/managed-by")
                .map(String::as_str),
            Some(MANAGED_BY)
        );
        assert_eq!(published_token(&s), Ok(a));
    }

    #[test]
    fn the_first_token_line_is_published() {
        let v = validated(FIXTURE);
        let with = |text: &str| {
            let mut s = secret(&v, "unused-token-0000000");
            s.data
                .as_mut()
                .unwrap()
                .insert(SECRET_KEY.into(), ByteString(text.as_bytes().to_vec()));
            published_token(&s)
        };
        assert_eq!(
            with("# rotated 2026-12-01\n\n  new-token-0123456789 \nold-token-0123456789\n"),
            Ok("new-token-0123456789".into())
        );
        assert!(with("").unwrap_err().contains("holds no token"));
        assert!(with("short\n").unwrap_err().contains("16-512"));
        let mut s = secret(&v, "x");
        s.data = None;
        assert!(published_token(&s).unwrap_err().contains("no key"));
    }
}

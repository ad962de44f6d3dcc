//! Docker's secret-provider plugin protocol: the JSON the engine sends and
//! the JSON it expects back (see `docker-secret-driver-protocol.md`).
//!
//! Every request field is optional and unknown fields are ignored: the
//! engine adds fields over time, and a driver that rejects them breaks.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize};

/// The `Content-Type` go-plugins-helpers answers with (the engine ignores it).
pub const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1.1+json";

/// `POST /SecretProvider.GetSecret` (swarmkit `SecretsProviderRequest`).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct GetSecretRequest {
    pub secret_name: String,
    #[serde(deserialize_with = "null_as_default")]
    pub secret_labels: BTreeMap<String, String>,
    /// The raw spec value: templates are not expanded by the engine.
    pub service_hostname: String,
    #[serde(rename = "ServiceID")]
    pub service_id: String,
    pub service_name: String,
    #[serde(deserialize_with = "null_as_default")]
    pub service_labels: BTreeMap<String, String>,
    #[serde(rename = "TaskID")]
    pub task_id: String,
    pub task_name: String,
    pub task_image: String,
    /// Sent by the engine, though missing from go-plugins-helpers' struct.
    #[serde(rename = "NodeID")]
    pub node_id: String,
    #[serde(deserialize_with = "null_as_default")]
    pub service_endpoint_spec: EndpointSpec,
}

impl GetSecretRequest {
    /// The engine's body, parsed exactly as `serde_json::from_slice` parses
    /// it, with one UTF-8 check of the whole body instead of one per string
    /// (serde_json's `str` reader skips its own). A body that is not UTF-8
    /// is parsed as bytes, so that it fails with the same message as ever.
    pub fn parse(body: &[u8]) -> serde_json::Result<Self> {
        match std::str::from_utf8(body) {
            Ok(text) => serde_json::from_str(text),
            Err(_) => serde_json::from_slice(body),
        }
    }
}

/// The service's endpoint spec. The engine encodes enums as integers.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct EndpointSpec {
    /// 0 = vip, 1 = dnsrr.
    pub mode: u32,
    #[serde(deserialize_with = "null_as_default")]
    pub ports: Vec<PortConfig>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct PortConfig {
    pub name: String,
    /// 0 = tcp, 1 = udp, 2 = sctp.
    pub protocol: u32,
    pub target_port: u32,
    pub published_port: u32,
    /// 0 = ingress, 1 = host.
    pub publish_mode: u32,
}

/// Go encodes a nil map or slice as `null`; treat it as empty.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// The answer to `GetSecret`: either a value or a non-empty `Err`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct GetSecretResponse<'a> {
    #[serde(serialize_with = "as_base64", skip_serializing_if = "<[u8]>::is_empty")]
    pub value: &'a [u8],
    #[serde(skip_serializing_if = "str::is_empty")]
    pub err: &'a str,
    pub do_not_reuse: bool,
}

impl<'a> GetSecretResponse<'a> {
    pub fn value(value: &'a [u8], do_not_reuse: bool) -> Self {
        Self {
            value,
            err: "",
            do_not_reuse,
        }
    }

    pub fn error(err: &'a str) -> Self {
        Self {
            value: &[],
            err,
            do_not_reuse: false,
        }
    }
}

/// The JSON of `GetSecretResponse::value(value, do_not_reuse)`, byte for
/// byte as serde_json writes it, built in one buffer: base64 text needs no
/// JSON escaping, so the encoded value goes straight in.
pub fn value_json(value: &[u8], do_not_reuse: bool) -> Vec<u8> {
    let tail = if do_not_reuse {
        r#""DoNotReuse":true}"#
    } else {
        r#""DoNotReuse":false}"#
    };
    if value.is_empty() {
        return format!("{{{tail}").into_bytes();
    }
    let encoded = base64::encoded_len(value.len(), true).unwrap_or(0);
    let mut json = String::with_capacity(12 + encoded + tail.len());
    json.push_str(r#"{"Value":""#);
    base64::engine::general_purpose::STANDARD.encode_string(value, &mut json);
    json.push_str("\",");
    json.push_str(tail);
    json.into_bytes()
}

fn as_base64<S: serde::Serializer>(bytes: &&[u8], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// `POST /Plugin.Activate`, for the legacy (v1) plugin discovery path.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ActivateResponse {
    pub implements: [&'static str; 1],
}

impl Default for ActivateResponse {
    fn default() -> Self {
        Self {
            implements: ["secretprovider"],
        }
    }
}

/// Any other failure (unknown route, malformed request): `{"Err": "..."}`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ErrorResponse {
    pub err: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_engine_request_and_ignores_unknown_fields() {
        let body = r#"{"SecretName":"st_db","SecretLabels":{"vaultbridge.path":"db"},
            "ServiceHostname":"{{.Service.Name}}-{{.Task.Slot}}","ServiceID":"s1",
            "ServiceName":"st_api","ServiceLabels":null,"TaskID":"t1","TaskName":"st_api.1.t1",
            "TaskImage":"wl:1","NodeID":"n1","FutureField":{"x":[1,2]},
            "ServiceEndpointSpec":{"Mode":1,"Ports":[{"Name":"http","Protocol":0,
            "TargetPort":8080,"PublishedPort":80,"PublishMode":1}]}}"#;
        let req: GetSecretRequest = serde_json::from_str(body).unwrap();
        assert_eq!(req.secret_name, "st_db");
        assert_eq!(req.node_id, "n1");
        assert_eq!(req.service_endpoint_spec.mode, 1);
        assert_eq!(req.service_endpoint_spec.ports[0].published_port, 80);
        assert!(req.service_labels.is_empty());

        let empty: GetSecretRequest = serde_json::from_str("{}").unwrap();
        assert_eq!(empty.secret_name, "");
    }

    #[test]
    fn parse_is_from_slice_with_one_utf8_check() {
        let bodies: [&[u8]; 11] = [
            br#"{"SecretName":"st_db","SecretLabels":{"a":"b"},"TaskID":"t1","Extra":[1,{"x":null}]}"#,
            br#"{"SecretName":"caf\u00e9 \"q\"","ServiceLabels":null,"ServiceEndpointSpec":null}"#,
            "{\"SecretName\":\"é∑😀\"}".as_bytes(),
            b"{\"SecretName\":\"\xff\xfe\"}",
            b"{\"SecretName\":\"x\"}\xff",
            b"\xc3{}",
            br#"{"SecretName":1}"#,
            b"{\"SecretName\":\"a\x01b\"}",
            br#"{"ServiceEndpointSpec":{"Ports":[{"TargetPort":-1}]}}"#,
            br#"{"SecretName":"\ud800"}"#,
            b"{nope",
        ];
        for body in bodies {
            let ours = GetSecretRequest::parse(body).map(|r| format!("{r:?}"));
            let serde = serde_json::from_slice::<GetSecretRequest>(body).map(|r| format!("{r:?}"));
            match (ours, serde) {
                (Ok(ours), Ok(serde)) => assert_eq!(ours, serde),
                (Err(ours), Err(serde)) => assert_eq!(ours.to_string(), serde.to_string()),
                (ours, serde) => panic!("{body:?}: {ours:?} / {serde:?}"),
            }
        }
    }

    #[test]
    fn value_json_is_what_serde_writes() {
        for value in [&b""[..], b"x", b"pw", b"supersecret", &[0, 255, 34, 92, 10]] {
            for do_not_reuse in [false, true] {
                let serde = serde_json::to_vec(&GetSecretResponse::value(value, do_not_reuse));
                assert_eq!(value_json(value, do_not_reuse), serde.unwrap());
            }
        }
    }

    #[test]
    fn encodes_values_as_padded_base64() {
        let json = serde_json::to_string(&GetSecretResponse::value(b"supersecret", true)).unwrap();
        assert_eq!(json, r#"{"Value":"c3VwZXJzZWNyZXQ=","DoNotReuse":true}"#);
        let json = serde_json::to_string(&GetSecretResponse::error("boom")).unwrap();
        assert_eq!(json, r#"{"Err":"boom","DoNotReuse":false}"#);
    }
}

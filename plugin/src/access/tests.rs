use super::*;

const PROVIDERS: &[&str] = &["vault", "aws", "local"];

fn policy(toml_text: &str) -> Policy {
    try_policy(toml_text).unwrap_or_else(|err| panic!("{err}"))
}

fn try_policy(toml_text: &str) -> Result<Policy, ConfigError> {
    let config: AccessConfig = toml::from_str(toml_text).expect("valid TOML");
    Policy::compile(&config, PROVIDERS)
}

struct Asking {
    request: GetSecretRequest<'static>,
}

fn service(name: &str, labels: &[(&str, &str)], image: &str) -> Asking {
    Asking {
        request: GetSecretRequest {
            service_name: name.to_string().into(),
            service_labels: labels
                .iter()
                .map(|(k, v)| (k.to_string().into(), v.to_string().into()))
                .collect(),
            task_image: image.to_string().into(),
            ..GetSecretRequest::default()
        },
    }
}

impl Asking {
    fn decide(&self, policy: &Policy, provider: &str, path: &str) -> Verdict {
        let caller = Caller {
            request: &self.request,
            secret: "db",
        };
        policy.decide(&caller, provider, path)
    }

    fn may(&self, policy: &Policy, provider: &str, path: &str) -> bool {
        self.decide(policy, provider, path).decision == Decision::Allow
    }
}

const TEAMS: &str = r#"
default = "deny"

[[rules]]
name = "ops reads everything"
service_labels = { team = "ops" }
paths = ["**"]

[[rules]]
name = "no prod from staging"
stack = "*-staging"
paths = ["prod/**"]
decision = "deny"

[[rules]]
name = "each stack its own subtree"
providers = ["vault"]
paths = ["apps/{stack}/**", "shared/*"]

[[rules]]
service = "billing_*"
image = "registry.example.com/billing/**"
paths = ["billing/{service.name}"]
"#;

#[test]
fn first_matching_rule_decides_then_the_default() {
    let p = policy(TEAMS);
    fn stack(name: &str) -> Vec<(&str, &str)> {
        vec![(STACK_NAMESPACE, name)]
    }
    let billing = service("billing_api", &stack("billing"), "app:1");
    assert!(billing.may(&p, "vault", "apps/billing/db"));
    assert!(billing.may(&p, "vault", "apps/billing/x/y"));
    assert!(billing.may(&p, "vault", "shared/ca"));
    // Another stack's subtree, another provider, a deeper shared path.
    assert!(!billing.may(&p, "vault", "apps/payments/db"));
    assert!(!billing.may(&p, "aws", "apps/billing/db"));
    assert!(!billing.may(&p, "vault", "shared/a/b"));
    let verdict = billing.decide(&p, "vault", "apps/payments/db");
    assert_eq!(&*verdict.by, "default");
    let verdict = billing.decide(&p, "vault", "apps/billing/db");
    assert_eq!(&*verdict.by, "rule 2 (each stack its own subtree)");

    // A deny rule before the allow: staging never reads prod, even its own.
    let staging = service("web", &stack("prod-staging"), "");
    assert!(!staging.may(&p, "vault", "prod/db"));
    assert_eq!(
        &*staging.decide(&p, "vault", "prod/db").by,
        "rule 1 (no prod from staging)"
    );
    assert!(staging.may(&p, "vault", "apps/prod-staging/db"));
    // ...but ops, first, reads everything.
    let ops = service("x", &[("team", "ops")], "");
    assert!(ops.may(&p, "local", "prod/db"));
    // A service outside any stack has no {stack}: that glob cannot grant,
    // the rule's other one still does.
    let loose = service("loose", &[], "");
    assert!(!loose.may(&p, "vault", "apps/loose/db"));
    assert!(loose.may(&p, "vault", "shared/ca"));
}

#[test]
fn images_match_on_repository_and_digest() {
    let p = policy(TEAMS);
    let billing = |image: &str| service("billing_api", &[], image);
    for image in [
        "registry.example.com/billing/api:1.2",
        "registry.example.com/billing/api",
        "registry.example.com/billing/api:1.2@sha256:0123",
    ] {
        assert!(
            billing(image).may(&p, "vault", "billing/billing_api"),
            "{image}"
        );
    }
    for image in [
        "registry.example.com/other/api:1",
        "",
        "evil/registry.example.com/billing/x",
    ] {
        assert!(
            !billing(image).may(&p, "vault", "billing/billing_api"),
            "{image}"
        );
    }
    assert_eq!(
        split_image("reg:5000/a/b:1@sha256:ff"),
        ("reg:5000/a/b", Some("sha256:ff"))
    );
    assert_eq!(split_image("reg:5000/a/b"), ("reg:5000/a/b", None));

    let digest = format!("sha256:{}", "a".repeat(64));
    let pinned = policy(&format!(
        "default = \"deny\"\n[[rules]]\nimage_digest = \"{digest}\"\npaths = [\"**\"]\n"
    ));
    assert!(service("s", &[], &format!("app:1@{digest}")).may(&pinned, "vault", "x"));
    assert!(!service("s", &[], "app:1").may(&pinned, "vault", "x"));
    let other = format!("sha256:{}", "b".repeat(64));
    assert!(!service("s", &[], &format!("app:1@{other}")).may(&pinned, "vault", "x"));
}

#[test]
fn placeholders_take_only_one_plain_segment() {
    let p = policy("default = \"deny\"\n[[rules]]\npaths = [\"teams/{service.label.team}/*\"]\n");
    let team = |value: &str| service("s", &[("team", value)], "");
    assert!(team("billing").may(&p, "vault", "teams/billing/db"));
    for hostile in [
        "billing/x",
        "..",
        "",
        " billing",
        "a\u{202e}b",
        &"x".repeat(200),
    ] {
        let path = format!("teams/{hostile}/db");
        assert!(!team(hostile).may(&p, "vault", &path), "{hostile:?}");
    }
    // A deny rule whose placeholder cannot be filled applies (fail closed).
    let p = policy(
        "default = \"allow\"\n[[rules]]\npaths = [\"teams/{service.label.team}/**\"]\ndecision = \"deny\"\n",
    );
    assert!(!service("s", &[], "").may(&p, "vault", "anything"));
}

#[test]
fn an_allow_default_and_no_rules() {
    let p = policy("default = \"allow\"\n");
    assert!(service("", &[], "").may(&p, "vault", "a"));
    let p = policy("default = \"deny\"\n");
    let verdict = service("", &[], "").decide(&p, "vault", "a");
    assert_eq!(verdict.to_string(), "deny by default");
}

#[test]
fn mistakes_are_config_errors_naming_the_key() {
    for (text, key, wanted) in [
        (
            "default = \"deny\"\n[[rules]]\npaths = []\n",
            "access.rules[0].paths",
            "is empty",
        ),
        (
            "default = \"deny\"\n[[rules]]\nproviders = [\"vaulx*\"]\npaths = [\"a\"]\n",
            "access.rules[0].providers",
            "matches no configured provider",
        ),
        (
            "default = \"deny\"\n[[rules]]\npaths = [\"a/../b\"]\n",
            "access.rules[0].paths",
            "can never match",
        ),
        (
            "default = \"deny\"\n[[rules]]\npaths = [\"/a/*\"]\n",
            "access.rules[0].paths",
            "start with '/'",
        ),
        (
            "default = \"deny\"\n[[rules]]\npaths = [\"a//*\"]\n",
            "access.rules[0].paths",
            "can never match",
        ),
        (
            "default = \"deny\"\n[[rules]]\npaths = [\"a/{stak}\"]\n",
            "access.rules[0].paths",
            "unknown placeholder",
        ),
        (
            "default = \"deny\"\n[[rules]]\nservice = \"{stack}\"\npaths = [\"a\"]\n",
            "access.rules[0].service",
            "only in paths",
        ),
        (
            "default = \"deny\"\n[[rules]]\nservice = \"a/b\"\npaths = [\"a\"]\n",
            "access.rules[0].service",
            "no '/'",
        ),
        (
            "default = \"deny\"\n[[rules]]\nimage_digest = \"sha256:xyz\"\npaths = [\"a\"]\n",
            "access.rules[0].image_digest",
            "64 hex",
        ),
    ] {
        let err = try_policy(text).unwrap_err();
        assert_eq!(err.key, key, "{text}");
        assert!(err.message.contains(wanted), "{text}: {err}");
    }
    // No default is a TOML error: the choice must be written down.
    assert!(toml::from_str::<AccessConfig>("[[rules]]\npaths = [\"a\"]\n").is_err());
    assert!(toml::from_str::<AccessConfig>("default = \"maybe\"\n").is_err());
}

#[test]
fn rules_that_never_decide_are_found() {
    let p = policy(
        r#"
default = "deny"
[[rules]]
stack = "*"
paths = ["apps/**"]
[[rules]]
stack = "billing"
paths = ["apps/{stack}/*"]
decision = "deny"
[[rules]]
service = "billing_*"
paths = ["other/*"]
"#,
    );
    let findings = p.findings();
    assert_eq!(findings.len(), 1, "{findings:?}");
    assert!(
        findings[0].starts_with("access.rules[1]: rule 1 never decides: rule 0"),
        "{findings:?}"
    );
    assert!(
        policy(TEAMS).findings().is_empty(),
        "{:?}",
        policy(TEAMS).findings()
    );
}

#[test]
fn huge_caller_text_never_grants_and_always_denies() {
    let huge = "t".repeat(MAX_CALLER_TEXT + 1);
    let p = policy(
        "default = \"deny\"\n[[rules]]\nservice_labels = { team = \"t*\" }\npaths = [\"**\"]\n",
    );
    assert!(service("s", &[("team", "tt")], "").may(&p, "vault", "x"));
    assert!(!service("s", &[("team", &huge)], "").may(&p, "vault", "x"));
    let p = policy(
        "default = \"allow\"\n[[rules]]\nimage = \"evil/*\"\npaths = [\"**\"]\ndecision = \"deny\"\n",
    );
    assert!(service("s", &[], "good/app").may(&p, "vault", "x"));
    assert!(!service("s", &[], &huge).may(&p, "vault", "x"));
}

//! Rows 3 and 4, against a real OpenBao server: added with the Vault provider.

pub async fn bench(
    _plugin: &std::path::Path,
    _figures: &mut Vec<serde_json::Value>,
    _ratios: &mut serde_json::Map<String, serde_json::Value>,
) -> anyhow::Result<serde_json::Value> {
    println!("(rows 3 and 4, OpenBao miss path and burst: not measured yet)");
    Ok(serde_json::Value::Null)
}

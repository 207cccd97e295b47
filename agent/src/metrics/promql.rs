//! Every PromQL expression the deploy/ dashboards and alert rules use, in
//! one list, so a test against a real Prometheus (and the check that they
//! only name metrics the agent exports) needs no copy of them.
//!
//! The rule files are read with a line scanner rather than a YAML parser:
//! it understands exactly the shapes deploy/ uses (`alert:` then `expr:`
//! inline or as a `|`/`>` block), and its tests count what it found.
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum PromqlError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not valid JSON: {source}")]
    Json {
        path: String,
        source: serde_json::Error,
    },
}

/// One expression and where it came from (panel title, variable name or
/// alert name).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expression {
    pub file: &'static str,
    pub origin: String,
    pub expr: String,
}

/// Files under the repository root that hold PromQL.
pub const DASHBOARD: &str = "deploy/grafana/egret-dashboard.json";
pub const RULES: &str = "deploy/prometheus/egret-alerts.yaml";
pub const PROMETHEUS_RULE: &str = "deploy/prometheus/egret-prometheusrule.yaml";

/// Every expression in the dashboard and both rule files.
pub fn deploy_expressions(repo_root: &Path) -> Result<Vec<Expression>, PromqlError> {
    let read = |rel: &str| {
        std::fs::read_to_string(repo_root.join(rel)).map_err(|source| PromqlError::Read {
            path: rel.to_owned(),
            source,
        })
    };
    let mut out = dashboard_expressions(DASHBOARD, &read(DASHBOARD)?)?;
    out.extend(rule_expressions(RULES, &read(RULES)?));
    out.extend(rule_expressions(PROMETHEUS_RULE, &read(PROMETHEUS_RULE)?));
    Ok(out)
}

/// Panel targets (rows nest panels) and query variables of a Grafana
/// dashboard.
pub fn dashboard_expressions(
    file: &'static str,
    json: &str,
) -> Result<Vec<Expression>, PromqlError> {
    let doc: serde_json::Value =
        serde_json::from_str(json).map_err(|source| PromqlError::Json {
            path: file.to_owned(),
            source,
        })?;
    let mut out = Vec::new();
    let mut stack: Vec<&serde_json::Value> =
        doc["panels"].as_array().into_iter().flatten().collect();
    while let Some(panel) = stack.pop() {
        stack.extend(panel["panels"].as_array().into_iter().flatten());
        let title = panel["title"].as_str().unwrap_or("untitled");
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                out.push(Expression {
                    file,
                    origin: format!("panel {title}"),
                    expr: expr.to_owned(),
                });
            }
        }
    }
    for var in doc["templating"]["list"].as_array().into_iter().flatten() {
        if var["type"] != "query" {
            continue;
        }
        let query = var["query"]["query"]
            .as_str()
            .or_else(|| var["query"].as_str())
            .or_else(|| var["definition"].as_str());
        if let Some(q) = query {
            let name = var["name"].as_str().unwrap_or("?");
            out.push(Expression {
                file,
                origin: format!("variable {name}"),
                expr: label_values_selector(q).to_owned(),
            });
        }
    }
    Ok(out)
}

/// `label_values(sel, label)` is Grafana's, not PromQL: the selector is.
fn label_values_selector(q: &str) -> &str {
    let Some(inner) = q
        .trim()
        .strip_prefix("label_values(")
        .and_then(|r| r.strip_suffix(')'))
    else {
        return q;
    };
    match inner.rfind(',') {
        Some(i) => inner[..i].trim(),
        None => inner.trim(),
    }
}

/// `expr:` of every alerting or recording rule in a Prometheus rule file or
/// a PrometheusRule manifest.
pub fn rule_expressions(file: &'static str, yaml: &str) -> Vec<Expression> {
    let mut out = Vec::new();
    let mut origin = String::new();
    let mut lines = yaml.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start().trim_start_matches("- ");
        if let Some(name) = trimmed
            .strip_prefix("alert:")
            .or_else(|| trimmed.strip_prefix("record:"))
        {
            origin = name.trim().trim_matches('"').to_owned();
            continue;
        }
        let Some(value) = trimmed.strip_prefix("expr:") else {
            continue;
        };
        let value = value.trim();
        let expr = if value.starts_with('|') || value.starts_with('>') {
            let indent = line.len() - line.trim_start().len();
            let mut block = Vec::new();
            while let Some(next) = lines.peek() {
                let next_indent = next.len() - next.trim_start().len();
                if !next.trim().is_empty() && next_indent <= indent {
                    break;
                }
                block.push(next.trim());
                lines.next();
            }
            block.join(" ").trim().to_owned()
        } else {
            unquote(value).to_owned()
        };
        out.push(Expression {
            file,
            origin: origin.clone(),
            expr,
        });
    }
    out
}

fn unquote(v: &str) -> &str {
    for q in ['"', '\''] {
        if let Some(inner) = v.strip_prefix(q).and_then(|r| r.strip_suffix(q)) {
            return inner;
        }
    }
    v
}

/// The expression with Grafana's variables replaced so Prometheus accepts
/// it: intervals become `5m`/`1h`, every other variable matches anything
/// (they are only used in `=~` matchers).
pub fn instantiate(expr: &str) -> String {
    let mut s = expr
        .replace("$__rate_interval", "5m")
        .replace("$__interval", "1m")
        .replace("$__range", "1h");
    while let Some(start) = s.find('$') {
        let rest = &s[start + 1..];
        let len = if let Some(inner) = rest.strip_prefix('{') {
            inner.find('}').map_or(rest.len(), |i| i + 2)
        } else {
            rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len())
        };
        s.replace_range(start..start + 1 + len, ".*");
    }
    s
}

/// Metric names an expression reads. A small tokenizer: string literals,
/// label matchers `{..}`, ranges `[..]`, numbers, function calls and the
/// label lists of `by`/`without`/`on`/`ignoring`/`group_*` are skipped;
/// every other identifier is a metric name.
pub fn metric_names(expr: &str) -> Vec<String> {
    const GROUPING: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    // Operators, and aggregations (which may put `by (..)` before their
    // parenthesis).
    const KEYWORDS: &[&str] = &[
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "inf",
        "nan",
        "sum",
        "avg",
        "min",
        "max",
        "count",
        "group",
        "topk",
        "bottomk",
        "quantile",
        "stddev",
        "stdvar",
        "count_values",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let mut names: Vec<String> = Vec::new();
    let mut i = 0;
    let skip_ws = |mut j: usize| {
        while j < chars.len() && chars[j].is_whitespace() {
            j += 1;
        }
        j
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_string(&chars, i);
        } else if c == '{' {
            i = skip_group(&chars, i, '{', '}');
        } else if c == '[' {
            i = skip_group(&chars, i, '[', ']');
        } else if c == '$' {
            // A Grafana variable (`offset $__range`), not a metric.
            i += 1;
            if chars.get(i) == Some(&'{') {
                i = skip_group(&chars, i, '{', '}');
            }
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
        } else if c.is_ascii_digit() || c == '.' {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = skip_ws(i);
            let lower = word.to_ascii_lowercase();
            if GROUPING.contains(&lower.as_str()) {
                if chars.get(next) == Some(&'(') {
                    i = skip_group(&chars, next, '(', ')');
                }
            } else if chars.get(next) == Some(&'(') || KEYWORDS.contains(&lower.as_str()) {
                // A function call or an operator keyword.
            } else if !names.contains(&word) {
                names.push(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// Index just past the string literal starting at `start`.
fn skip_string(chars: &[char], start: usize) -> usize {
    let quote = chars[start];
    let mut i = start + 1;
    while i < chars.len() {
        match chars[i] {
            '\\' if quote != '`' => i += 2,
            c if c == quote => return i + 1,
            _ => i += 1,
        }
    }
    chars.len()
}

/// Index just past the bracketed group starting at `start` (strings inside
/// are skipped whole, so a `}` in a label value does not end it).
fn skip_group(chars: &[char], start: usize, open: char, close: char) -> usize {
    let mut depth = 0usize;
    let mut i = start;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_string(chars, i);
            continue;
        }
        if c == open {
            depth += 1;
        } else if c == close {
            depth -= 1;
            if depth == 0 {
                return i + 1;
            }
        }
        i += 1;
    }
    chars.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_metric_names_only() {
        let expr = r#"sum by (rule, priority) (rate(egret_alerts_total{rule=~"a}b", k8s_ns_name!=""}[5m])) / on (instance) group_left max(egret_build_info) > 0.5 and absent(up{job="egret"}) or vector(0)"#;
        assert_eq!(
            metric_names(expr),
            ["egret_alerts_total", "egret_build_info", "up"]
        );
        assert_eq!(
            metric_names(
                "histogram_quantile(0.99, sum by (le) (rate(egret_webhook_request_duration_seconds_bucket[5m])))"
            ),
            ["egret_webhook_request_duration_seconds_bucket"]
        );
        assert_eq!(
            metric_names(
                "(x{a=\"1\"} unless x{a=\"1\"} offset $__range) or increase(x[${__range}])"
            ),
            ["x"]
        );
    }

    #[test]
    fn grafana_variables_become_matchers() {
        assert_eq!(
            instantiate(r#"rate(x{instance=~"$instance", job=~"${job}"}[$__rate_interval])"#),
            r#"rate(x{instance=~".*", job=~".*"}[5m])"#
        );
    }

    #[test]
    fn rule_scanner_reads_inline_and_block_exprs() {
        let yaml = "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: up == 0\n        for: 5m\n      - alert: B\n        expr: |\n          sum(rate(x_total[5m]))\n            > 0\n        labels:\n          severity: warning\n";
        let found = rule_expressions("f", yaml);
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].expr, "up == 0");
        assert_eq!(found[1].origin, "B");
        assert_eq!(found[1].expr, "sum(rate(x_total[5m])) > 0");
    }

    #[test]
    fn label_values_variable_is_reduced_to_its_selector() {
        assert_eq!(
            label_values_selector("label_values(egret_build_info{job=~\"$job\"}, instance)"),
            "egret_build_info{job=~\"$job\"}"
        );
        assert_eq!(label_values_selector("up"), "up");
    }
}

//! `Options::skip_unsupported` (`--skip-unsupported-rules`): rules needing
//! event types or Falco fields Egret lacks are skipped with one summary;
//! typos stay errors.
mod common;

use common::*;
use egret_rules::{Options, RuleStatus};

#[test]
fn skip_unsupported_skips_what_egret_lacks_but_not_typos() {
    let skip = Options {
        skip_unsupported: true,
        ..Options::default()
    };
    let yaml = "
- list: shells
  items: [bash, sh]
- macro: spawned
  condition: evt.type = execve and proc.name in (shells)
- rule: Shell
  desc: d
  condition: spawned
  output: o
  priority: INFO
- rule: Ancestor
  desc: d
  condition: evt.type = connect and proc.aname[2] = sshd
  output: o
  priority: INFO
- rule: Kept
  desc: d
  condition: evt.type = connect and fd.lport = 0
  output: o
  priority: INFO
";
    let loaded = load_text(yaml, &skip);
    assert_eq!(
        diagnostics(&loaded),
        [
            "test.yaml:6:3: warning: skipped 2 unsupported rule(s) (skip_unsupported_rules): 1 need event types Egret does not see: execve (1); 1 need fields Egret does not provide: proc.aname (1); `egret rules list` shows each"
        ]
    );
    assert_eq!(
        loaded.rules[0].status,
        RuleStatus::Unsupported {
            fields: Vec::new(),
            event_types: vec!["execve".into()],
            requested_skip: true
        }
    );
    assert_eq!(
        loaded.rules[1].status,
        RuleStatus::Unsupported {
            fields: vec!["proc.aname".into()],
            event_types: Vec::new(),
            requested_skip: true
        }
    );
    assert_eq!(loaded.ruleset.rules().len(), 1);
    // Strict by default: the Falco field is an error, the execve rule loads
    // (it never fires).
    let strict = load_text(yaml, &Options::default());
    let errors: Vec<String> = diagnostics(&strict)
        .into_iter()
        .filter(|d| d.contains("error"))
        .collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("'proc.aname'"), "{errors:?}");

    // Typos stay errors with the option.
    let typo = "
- rule: Typo field
  desc: d
  condition: evt.type = connect and proc.nmae = curl
  output: o
  priority: INFO
- rule: Typo type
  desc: d
  condition: evt.type = conect
  output: o
  priority: INFO
";
    let loaded = load_text(typo, &skip);
    let all = diagnostics(&loaded);
    assert_eq!(
        all,
        [
            "test.yaml:2:3: error: rule 'Typo field': unknown field 'proc.nmae' (condition at test.yaml:4:37): not a Falco field either; did you mean 'proc.name'?",
            "test.yaml:9:25: error: rule 'Typo type': unknown event type 'conect'; did you mean 'connect'?",
        ]
    );
    assert!(loaded.rules.iter().all(|r| r.status == RuleStatus::Failed));
}

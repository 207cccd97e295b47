//! Shared by the fuzz targets (not a target itself).

/// libyaml-safer 0.3 still has `panic!` paths (e.g. a tag followed by `,`
/// in a flow collection). Egret's loader catches panics raised inside the
/// parser and reports the file as invalid (yaml.rs), and that is what this
/// target checks: a panic from the parser is left to unwind to that guard,
/// every other panic aborts at once as libfuzzer-sys arranges. A parser
/// panic the guard failed to catch would still abort in the fuzz wrapper.
pub fn let_parser_panics_unwind() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let aborting = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_parser = info
                .location()
                .is_some_and(|at| at.file().contains("libyaml-safer"));
            if !in_parser {
                aborting(info);
            }
        }));
    });
}


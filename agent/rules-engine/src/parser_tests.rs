use super::*;

fn ok(src: &str) -> Expr {
    parse(src).unwrap_or_else(|e| panic!("{src:?}: {e}"))
}

fn err(src: &str) -> ParseError {
    parse(src).expect_err(src)
}

fn check(e: &Expr) -> &Check {
    match &e.kind {
        ExprKind::Check(c) => c,
        other => panic!("not a check: {other:?}"),
    }
}

fn values(e: &Expr) -> Vec<(&str, bool)> {
    match &check(e).rhs {
        Rhs::List(items) => items.iter().map(|l| (l.text.as_str(), l.quoted)).collect(),
        Rhs::Value(l) => vec![(l.text.as_str(), l.quoted)],
        Rhs::None => vec![],
    }
}

#[test]
fn precedence_and_grouping() {
    let e = ok("a and b or not c and (d or e)");
    let ExprKind::Or(or) = &e.kind else { panic!() };
    assert_eq!(or.len(), 2);
    assert!(matches!(&or[0].kind, ExprKind::And(v) if v.len() == 2));
    let ExprKind::And(and) = &or[1].kind else {
        panic!()
    };
    assert!(matches!(&and[0].kind, ExprKind::Not(_)));
    assert!(matches!(&and[1].kind, ExprKind::Or(v) if v.len() == 2));
}

#[test]
fn falco_tokenisation() {
    // No blanks around operators, commas or parentheses.
    let e = ok("fd.num>=0 and fd.typechar='f' and evt.type in (open,openat,openat2)");
    let ExprKind::And(parts) = &e.kind else {
        panic!()
    };
    assert_eq!(check(&parts[0]).op, Op::Ge);
    assert_eq!(values(&parts[1]), [("f", true)]);
    assert_eq!(
        values(&parts[2]),
        [("open", false), ("openat", false), ("openat2", false)]
    );
    // Bare strings may hold anything but blanks, quotes, parens, '=' and ','.
    let e = ok("fd.name = 10.0.0.1:443->[::1]:80");
    assert_eq!(values(&e), [("10.0.0.1:443->[::1]:80", false)]);
    // `and(` / `or(` / `not(` need no blank. As in libsinsp, the group after
    // `or(` ends that operand: `a or(b) and c` does not parse.
    ok("a and(b)or(c)");
    ok("not(d) and e");
    assert!(err("a or(b) and c").message.contains("unexpected token"));
    // Keywords inside identifiers are identifiers.
    let e = ok("notable or android or order");
    assert!(matches!(&e.kind, ExprKind::Or(v) if v.len() == 3));
    // `==` is `=`.
    assert_eq!(check(&ok("proc.name==sshd")).op, Op::Eq);
}

#[test]
fn quoted_strings_unescape_like_libsinsp() {
    assert_eq!(
        values(&ok(r#"proc.cmdline = "a \"b\" \\c""#)),
        [(r#"a "b" \c"#, true)]
    );
    assert_eq!(values(&ok(r"proc.cmdline = 'it\'s'")), [("it's", true)]);
    assert_eq!(
        values(&ok(r#"proc.cmdline = "tab\there\x41""#)),
        [("tab\thereA", true)]
    );
    assert_eq!(
        values(&ok(r#"proc.cmdline contains "a b""#)),
        [("a b", true)]
    );
    assert!(
        err(r#"proc.name = "\q""#)
            .message
            .contains("unsupported string escape")
    );
    assert!(err(r#"proc.name = '\"'"#).message.contains("invalid"));
    assert!(err(r#"proc.name = "open"#).message.contains("unterminated"));
}

#[test]
fn operators() {
    for (src, op) in [
        ("f.x exists", Op::Exists),
        ("f.x != a", Op::Ne),
        ("f.x < 1", Op::Lt),
        ("f.x <= 0x1F", Op::Le),
        ("f.x > -1.5e+3", Op::Gt),
        ("f.x contains a", Op::Contains),
        ("f.x icontains a", Op::IContains),
        ("f.x bcontains 0a0b", Op::BContains),
        ("f.x startswith a", Op::StartsWith),
        ("f.x bstartswith 0a", Op::BStartsWith),
        ("f.x endswith a", Op::EndsWith),
        ("f.x glob '*.sh'", Op::Glob),
        ("f.x iglob a*", Op::IGlob),
        ("f.x regex '^a+$'", Op::Regex),
        ("f.x in (a)", Op::In),
        ("f.x intersects (a)", Op::Intersects),
        ("f.x pmatch (/tmp)", Op::PMatch),
    ] {
        assert_eq!(check(&ok(src)).op, op, "{src}");
    }
    // Word operators need a blank after them; numbers after `<`.
    assert!(
        err("f.x contains(a)")
            .message
            .contains("valid check operator")
    );
    assert!(err("f.x < abc").message.contains("number"));
}

#[test]
fn lists_and_field_args() {
    assert_eq!(values(&ok("f.x in ()")), []);
    assert_eq!(
        values(&ok("f.x in ( a , 'b c' )")),
        [("a", false), ("b c", true)]
    );
    assert_eq!(values(&ok("f.x in my_list")), [("my_list", false)]);
    let e = ok("proc.aname[2] = sh and k8s.pod.label['app.kubernetes.io/name'] = web");
    let ExprKind::And(parts) = &e.kind else {
        panic!()
    };
    assert_eq!(check(&parts[0]).arg.as_deref(), Some("2"));
    assert_eq!(
        check(&parts[1]).arg.as_deref(),
        Some("app.kubernetes.io/name")
    );
    assert!(err("f.x in (a,)").message.contains("string value"));
    assert!(err("f.x in (a").message.contains("')'"));
    assert!(err("proc.aname[2 = x").message.contains("']'"));
}

#[test]
fn errors_carry_offsets() {
    let e = err("evt.type = connect and");
    assert_eq!(e.offset, 22);
    let e = err("evt.type = connect proc.name");
    assert!(
        e.message.contains("unexpected token after 'connect'"),
        "{e}"
    );
    assert_eq!(e.offset, 19);
    assert!(err("").message.contains("empty"));
    assert!(err("   ").message.contains("expected"));
    assert!(err("a andb").message.contains("after 'and'"));
    assert!(err("(a").message.contains("')'"));
    assert!(
        err("tolower(proc.name) = x")
            .message
            .contains("not supported")
    );
    assert!(
        err("proc.name = val(proc.pname)")
            .message
            .contains("not supported")
    );
}

#[test]
fn deep_nesting_is_refused_not_overflowed() {
    let deep = format!("{}a{}", "(".repeat(100_000), ")".repeat(100_000));
    assert!(err(&deep).message.contains("nests more than"));
    let nots = format!("{}a", "not ".repeat(100_000));
    ok(&nots);
    let nested_not = format!("{}a{}", "not(".repeat(50_000), ")".repeat(50_000));
    assert!(err(&nested_not).message.contains("nests more than"));
    let ok_depth = format!(
        "{}a{}",
        "(".repeat(MAX_NESTING as usize),
        ")".repeat(MAX_NESTING as usize)
    );
    ok(&ok_depth);
}

#[test]
fn single_fields() {
    assert_eq!(parse_field("proc.name"), Some(("proc.name".into(), None)));
    assert_eq!(
        parse_field(" proc.aname[3] "),
        Some(("proc.aname".into(), Some("3".into())))
    );
    assert_eq!(parse_field("proc"), None);
    assert_eq!(parse_field("proc.name x"), None);
}

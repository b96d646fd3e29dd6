#!/usr/bin/env python3
"""Checks of monitoring/ beyond promtool's own (TAP 055 runs it).

monitoring_check.py RULES DASHBOARD OUTDIR SCRAPE...

- the dashboard is JSON, and every PromQL expression in it, its Grafana
  variables put in, is accepted by promtool: they are written to
  OUTDIR/dashboard.rules.yml as recording rules for `promtool check rules`
  (the caller runs it);
- every metric the rules and the dashboard name is one that infra or
  infra-bridge exposes: a family of the SCRAPE files (Prometheus text
  format as served), with _bucket/_sum/_count for histograms, or `up`.
Prints what is wrong and exits 1, else prints a summary.
"""
import json
import re
import sys


def exposed(paths):
    names = {"up"}
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for line in f:
                m = re.match(r"# TYPE (\S+) (\S+)", line)
                if not m:
                    continue
                name, kind = m.groups()
                if kind in ("histogram", "summary"):
                    names.update({name + "_bucket", name + "_sum", name + "_count"})
                    if kind == "summary":
                        names.add(name)
                else:
                    names.add(name)
    return names


def rule_exprs(path):
    """The expr: values of a rules file (plain or | blocks)."""
    exprs = []
    lines = open(path, encoding="utf-8").read().split("\n")
    i = 0
    while i < len(lines):
        m = re.match(r"^(\s*)expr:\s*(.*)$", lines[i])
        if m:
            indent, rest = m.groups()
            if rest.strip() == "|":
                block = []
                i += 1
                while i < len(lines) and (lines[i].strip() == "" or len(lines[i]) - len(lines[i].lstrip()) > len(indent)):
                    block.append(lines[i].strip())
                    i += 1
                exprs.append(" ".join(block))
                continue
            exprs.append(rest.strip())
        i += 1
    return exprs


def grafana_vars(expr):
    expr = expr.replace("$__rate_interval", "1m").replace("${__rate_interval}", "1m")
    return re.sub(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?", ".*", expr)


def metric_names(expr):
    # Strip strings (label values) first; recorded names carry colons.
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    return set(re.findall(r"(?<![A-Za-z0-9_:])((?:infra_|up\b)[A-Za-z0-9_]*)", bare))


def main():
    rules, dashboard, outdir = sys.argv[1:4]
    names = exposed(sys.argv[4:])
    problems = []
    try:
        dash = json.load(open(dashboard, encoding="utf-8"))
    except ValueError as e:
        print(f"{dashboard}: not JSON: {e}")
        return 1
    targets = []
    stack = list(dash.get("panels", []))
    while stack:
        p = stack.pop(0)
        stack.extend(p.get("panels", []))
        for t in p.get("targets", []):
            if "expr" in t:
                targets.append((p.get("title", "?"), t["expr"]))
    if not targets:
        problems.append(f"{dashboard}: no PromQL expressions found")
    with open(f"{outdir}/dashboard.rules.yml", "w", encoding="utf-8") as out:
        out.write("groups:\n  - name: dashboard\n    rules:\n")
        for n, (title, expr) in enumerate(targets):
            out.write(f"      - record: dashboard:expr_{n}\n        expr: {json.dumps(grafana_vars(expr))}\n")
    used = {}
    for expr in rule_exprs(rules):
        for name in metric_names(expr):
            used.setdefault(name, set()).add(rules)
    for title, expr in targets:
        for name in metric_names(expr):
            used.setdefault(name, set()).add(f"panel {title!r}")
    for name in sorted(used):
        if name not in names:
            problems.append(f"{name} (in {', '.join(sorted(used[name]))}) is not exposed by infra or infra-bridge")
    for p in problems:
        print(p)
    if problems:
        return 1
    print(f"{len(targets)} dashboard expressions; {len(used)} metric names used, all exposed")
    return 0


if __name__ == "__main__":
    sys.exit(main())

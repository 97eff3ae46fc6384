//! The dependency graph between services. Cycles are reported (each strongly connected
//! set of two or more services), never refused: a platform learns about its cycles from
//! the graph, and a registration must not fail because a peer declared a dependency back.

use crate::snapshot::Snapshot;
use pake_mesh_server::types;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};

pub fn build(snapshot: &Snapshot, root: Option<&str>) -> Result<types::DependencyGraph, serde_json::Error> {
    // Adjacency over names: registered services and whatever they depend on.
    let mut edges: BTreeMap<String, Vec<(String, types::DependencyKind)>> = BTreeMap::new();
    let mut versions: BTreeMap<String, Option<String>> = BTreeMap::new();
    for data in snapshot.services() {
        let name = data.service.name.to_string();
        versions.insert(name.clone(), Some(data.service.version.to_string()));
        let out = edges.entry(name).or_default();
        for dependency in &data.dependencies {
            out.push((dependency.depends_on.to_string(), dependency.kind));
        }
    }
    for targets in edges.clone().values() {
        for (target, _) in targets {
            versions.entry(target.clone()).or_insert(None);
            edges.entry(target.clone()).or_default();
        }
    }

    let included: BTreeSet<String> = match root {
        None => versions.keys().cloned().collect(),
        Some(root) => {
            let mut seen = BTreeSet::new();
            let mut pending = vec![root.to_string()];
            while let Some(next) = pending.pop() {
                if seen.insert(next.clone()) {
                    pending.extend(edges.get(&next).into_iter().flatten().map(|(t, _)| t.clone()));
                }
            }
            seen
        }
    };

    let nodes: Vec<_> = included
        .iter()
        .map(|name| json!({"service": name, "version": versions.get(name).cloned().flatten(), "registered": versions.get(name).is_some_and(Option::is_some)}))
        .collect();
    let edge_list: Vec<_> = included
        .iter()
        .flat_map(|from| {
            edges.get(from).into_iter().flatten().map(move |(to, kind)| json!({"from": from, "to": to, "kind": kind}))
        })
        .collect();
    let cycles = strongly_connected(&included, &edges);
    serde_json::from_value(json!({"nodes": nodes, "edges": edge_list, "cycles": cycles}))
}

/// Tarjan's algorithm over the included names; returns the components of two or more
/// services, each sorted, in name order.
fn strongly_connected(
    names: &BTreeSet<String>,
    edges: &BTreeMap<String, Vec<(String, types::DependencyKind)>>,
) -> Vec<Vec<String>> {
    struct State<'a> {
        edges: &'a BTreeMap<String, Vec<(String, types::DependencyKind)>>,
        names: &'a BTreeSet<String>,
        next: usize,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        found: Vec<Vec<String>>,
    }
    fn visit<'a>(state: &mut State<'a>, node: &'a str) {
        state.index.insert(node, state.next);
        state.low.insert(node, state.next);
        state.next += 1;
        state.stack.push(node);
        state.on_stack.insert(node);
        let edges = state.edges;
        for (target, _) in edges.get(node).into_iter().flatten() {
            let target = target.as_str();
            if !state.names.contains(target) {
                continue;
            }
            if !state.index.contains_key(target) {
                visit(state, target);
                let low = state.low[node].min(state.low[target]);
                state.low.insert(node, low);
            } else if state.on_stack.contains(target) {
                let low = state.low[node].min(state.index[target]);
                state.low.insert(node, low);
            }
        }
        if state.low[node] == state.index[node] {
            let mut component = Vec::new();
            while let Some(member) = state.stack.pop() {
                state.on_stack.remove(member);
                component.push(member.to_string());
                if member == node {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                state.found.push(component);
            }
        }
    }
    let mut state = State {
        edges,
        names,
        next: 0,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for name in names {
        if !state.index.contains_key(name.as_str()) {
            visit(&mut state, name);
        }
    }
    state.found.sort();
    state.found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(pairs: &[(&str, &str)]) -> Vec<Vec<String>> {
        let mut edges: BTreeMap<String, Vec<(String, types::DependencyKind)>> = BTreeMap::new();
        let mut names = BTreeSet::new();
        for (from, to) in pairs {
            edges.entry(from.to_string()).or_default().push((to.to_string(), types::DependencyKind::Hard));
            names.insert(from.to_string());
            names.insert(to.to_string());
        }
        strongly_connected(&names, &edges)
    }

    #[test]
    fn cycles_are_found_and_acyclic_graphs_have_none() {
        assert!(graph(&[("a", "b"), ("b", "c"), ("a", "c")]).is_empty());
        assert_eq!(graph(&[("a", "b"), ("b", "a"), ("b", "c")]), vec![vec!["a".to_string(), "b".to_string()]]);
        assert_eq!(
            graph(&[("a", "b"), ("b", "c"), ("c", "a"), ("x", "y"), ("y", "x")]),
            vec![vec!["a".to_string(), "b".into(), "c".into()], vec!["x".to_string(), "y".into()]]
        );
    }
}

//! The dependency graph between services. Cycles are reported (each strongly connected
//! set of two or more services), never refused: a platform learns about its cycles from
//! the graph, and a registration must not fail because a peer declared a dependency back.

use crate::snapshot::Snapshot;
use pake_mesh_server::types::{self, ServiceName};
use std::collections::{BTreeMap, BTreeSet};

type Edges = BTreeMap<ServiceName, Vec<(ServiceName, types::DependencyKind)>>;

pub fn build(snapshot: &Snapshot, root: Option<&ServiceName>) -> types::DependencyGraph {
    // Adjacency over names: registered services and whatever they depend on.
    let mut edges: Edges = BTreeMap::new();
    let mut versions: BTreeMap<ServiceName, Option<types::SemanticVersion>> = BTreeMap::new();
    for data in snapshot.services() {
        let name = data.service.name.clone();
        versions.insert(name.clone(), Some(data.service.version.clone()));
        let out = edges.entry(name).or_default();
        for dependency in &data.dependencies {
            out.push((dependency.depends_on.clone(), dependency.kind));
        }
    }
    for targets in edges.clone().values() {
        for (target, _) in targets {
            versions.entry(target.clone()).or_insert(None);
            edges.entry(target.clone()).or_default();
        }
    }

    let included: BTreeSet<ServiceName> = match root {
        None => versions.keys().cloned().collect(),
        Some(root) => {
            let mut seen = BTreeSet::new();
            let mut pending = vec![root.clone()];
            while let Some(next) = pending.pop() {
                if seen.insert(next.clone()) {
                    pending.extend(edges.get(&next).into_iter().flatten().map(|(t, _)| t.clone()));
                }
            }
            seen
        }
    };

    let nodes = included
        .iter()
        .map(|name| {
            let version = versions.get(name).cloned().flatten();
            types::DependencyNode { service: name.clone(), registered: version.is_some(), version }
        })
        .collect();
    let edge_list = included
        .iter()
        .flat_map(|from| {
            edges.get(from).into_iter().flatten().map(move |(to, kind)| types::DependencyEdge {
                from: from.clone(),
                to: to.clone(),
                kind: *kind,
            })
        })
        .collect();
    let cycles = strongly_connected(&included, &edges);
    types::DependencyGraph { nodes, edges: edge_list, cycles }
}

/// Tarjan's algorithm over the included names; returns the components of two or more
/// services, each sorted, in name order.
fn strongly_connected(names: &BTreeSet<ServiceName>, edges: &Edges) -> Vec<Vec<ServiceName>> {
    struct State<'a> {
        edges: &'a Edges,
        names: &'a BTreeSet<ServiceName>,
        next: usize,
        index: BTreeMap<&'a ServiceName, usize>,
        low: BTreeMap<&'a ServiceName, usize>,
        stack: Vec<&'a ServiceName>,
        on_stack: BTreeSet<&'a ServiceName>,
        found: Vec<Vec<ServiceName>>,
    }
    fn visit<'a>(state: &mut State<'a>, node: &'a ServiceName) {
        state.index.insert(node, state.next);
        state.low.insert(node, state.next);
        state.next += 1;
        state.stack.push(node);
        state.on_stack.insert(node);
        let edges = state.edges;
        for (target, _) in edges.get(node).into_iter().flatten() {
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
                component.push(member.clone());
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
        if !state.index.contains_key(name) {
            visit(&mut state, name);
        }
    }
    state.found.sort();
    state.found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(text: &str) -> ServiceName {
        text.parse().expect("a valid service name")
    }

    fn graph(pairs: &[(&str, &str)]) -> Vec<Vec<String>> {
        let mut edges: Edges = BTreeMap::new();
        let mut names = BTreeSet::new();
        for (from, to) in pairs {
            edges.entry(name(from)).or_default().push((name(to), types::DependencyKind::Hard));
            names.insert(name(from));
            names.insert(name(to));
        }
        strongly_connected(&names, &edges)
            .into_iter()
            .map(|cycle| cycle.into_iter().map(String::from).collect())
            .collect()
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

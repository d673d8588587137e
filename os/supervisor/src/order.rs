//! The dependency graph: validation, start order and reverse stop order.

use std::collections::{HashMap, HashSet};

use crate::error::Error;

/// Services and the names they depend on, in insertion order.
#[derive(Debug, Clone, Default)]
pub(crate) struct DepGraph {
    nodes: Vec<(String, Vec<String>)>,
}

impl DepGraph {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Adds nodes after checking duplicates, unknown dependencies and cycles over the
    /// union of existing and new nodes. On error nothing is added.
    pub(crate) fn extend(&mut self, new: Vec<(String, Vec<String>)>) -> Result<(), Error> {
        let mut names: HashSet<&str> = self.nodes.iter().map(|(n, _)| n.as_str()).collect();
        for (name, _) in &new {
            if !names.insert(name.as_str()) {
                return Err(Error::DuplicateService { name: name.clone() });
            }
        }
        for (name, deps) in &new {
            if let Some(dep) = deps.iter().find(|d| !names.contains(d.as_str())) {
                return Err(Error::UnknownDependency {
                    service: name.clone(),
                    dependency: dep.clone(),
                });
            }
        }
        let mut candidate = self.clone();
        candidate.nodes.extend(new);
        if let Some(cycle) = candidate.find_cycle() {
            return Err(Error::DependencyCycle { cycle });
        }
        *self = candidate;
        Ok(())
    }

    pub(crate) fn deps(&self, name: &str) -> &[String] {
        self.nodes
            .iter()
            .find(|(n, _)| n == name)
            .map_or(&[], |(_, d)| d.as_slice())
    }

    /// Services that list `name` in their `depends_on`.
    pub(crate) fn dependents<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.nodes
            .iter()
            .filter(move |(_, deps)| deps.iter().any(|d| d == name))
            .map(|(n, _)| n.as_str())
    }

    /// Dependencies before dependents; ties keep insertion order.
    pub(crate) fn start_order(&self) -> Vec<String> {
        let mut placed: HashSet<&str> = HashSet::new();
        let mut order = Vec::with_capacity(self.nodes.len());
        while order.len() < self.nodes.len() {
            let next = self.nodes.iter().find(|(n, deps)| {
                !placed.contains(n.as_str()) && deps.iter().all(|d| placed.contains(d.as_str()))
            });
            match next {
                Some((name, _)) => {
                    placed.insert(name);
                    order.push(name.clone());
                }
                // Only reachable with a cycle, which `extend` rejects.
                None => break,
            }
        }
        order
    }

    /// Dependents before their dependencies: the reverse of `start_order`.
    pub(crate) fn stop_order(&self) -> Vec<String> {
        let mut order = self.start_order();
        order.reverse();
        order
    }

    fn find_cycle(&self) -> Option<Vec<String>> {
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            Visiting,
            Done,
        }
        fn visit<'a>(
            graph: &'a HashMap<&'a str, &'a [String]>,
            node: &'a str,
            marks: &mut HashMap<&'a str, Mark>,
            path: &mut Vec<&'a str>,
        ) -> Option<Vec<String>> {
            match marks.get(node) {
                Some(Mark::Done) => return None,
                Some(Mark::Visiting) => {
                    let start = path.iter().position(|n| *n == node).unwrap_or(0);
                    let mut cycle: Vec<String> =
                        path[start..].iter().map(|s| (*s).to_owned()).collect();
                    cycle.push(node.to_owned());
                    return Some(cycle);
                }
                None => {}
            }
            marks.insert(node, Mark::Visiting);
            path.push(node);
            for dep in graph.get(node).copied().unwrap_or(&[]) {
                if let Some(cycle) = visit(graph, dep, marks, path) {
                    return Some(cycle);
                }
            }
            path.pop();
            marks.insert(node, Mark::Done);
            None
        }

        let graph: HashMap<&str, &[String]> = self
            .nodes
            .iter()
            .map(|(n, d)| (n.as_str(), d.as_slice()))
            .collect();
        let mut marks = HashMap::new();
        for (name, _) in &self.nodes {
            let mut path = Vec::new();
            if let Some(cycle) = visit(&graph, name, &mut marks, &mut path) {
                return Some(cycle);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, deps: &[&str]) -> (String, Vec<String>) {
        (
            name.to_owned(),
            deps.iter().map(|d| (*d).to_owned()).collect(),
        )
    }

    #[test]
    fn unknown_dependency_is_named() {
        let mut g = DepGraph::new();
        let err = g
            .extend(vec![node("apiserver", &["etcd"])])
            .unwrap_err()
            .to_string();
        assert_eq!(err, "service apiserver depends on unknown service etcd");
        assert!(g.start_order().is_empty(), "nothing added on error");
    }

    #[test]
    fn duplicates_are_named() {
        let mut g = DepGraph::new();
        let err = g
            .extend(vec![node("etcd", &[]), node("etcd", &[])])
            .unwrap_err()
            .to_string();
        assert_eq!(err, "duplicate service etcd");
        g.extend(vec![node("etcd", &[])]).unwrap();
        let err = g.extend(vec![node("etcd", &[])]).unwrap_err().to_string();
        assert_eq!(err, "duplicate service etcd");
    }

    #[test]
    fn cycles_are_named() {
        let mut g = DepGraph::new();
        g.extend(vec![node("base", &[])]).unwrap();
        let err = g
            .extend(vec![
                node("a", &["base", "c"]),
                node("b", &["a"]),
                node("c", &["b"]),
            ])
            .unwrap_err()
            .to_string();
        assert_eq!(err, "dependency cycle: a -> c -> b -> a");
        assert_eq!(g.start_order(), vec!["base"]);
    }

    #[test]
    fn start_and_stop_order() {
        let mut g = DepGraph::new();
        g.extend(vec![
            node("kubelet", &["containerd", "apiserver"]),
            node("apiserver", &["etcd"]),
            node("etcd", &[]),
            node("containerd", &[]),
        ])
        .unwrap();
        g.extend(vec![node("scheduler", &["apiserver"])]).unwrap();
        assert_eq!(
            g.start_order(),
            vec!["etcd", "apiserver", "containerd", "kubelet", "scheduler"]
        );
        assert_eq!(
            g.stop_order(),
            vec!["scheduler", "kubelet", "containerd", "apiserver", "etcd"]
        );
        let mut deps: Vec<_> = g.dependents("apiserver").collect();
        deps.sort_unstable();
        assert_eq!(deps, vec!["kubelet", "scheduler"]);
        assert_eq!(g.deps("kubelet"), ["containerd", "apiserver"]);
    }
}

//! Which variables belong to a path of the supernet.
//!
//! Path-wise training (DetNAS arXiv:1903.10979 §3.2, after single-path one-shot NAS) must
//! move only the sampled path's parameters: the
//! optimizer is handed exactly these variables, so off-path choices get no gradient step, no
//! momentum step and no weight decay — whatever their `.grad` holds.

use detnas_space::Arch;
use std::collections::BTreeMap;
use tch::{Tensor, nn};

/// The trainable variables of a supernet var store, grouped by (block, choice).
#[derive(Debug)]
pub struct PathIndex {
    /// Variables outside `features` (stem, head, and later FPN and detection heads).
    shared: Vec<(String, Tensor)>,
    /// `choice_vars[(block, choice id)]`.
    choice_vars: BTreeMap<(usize, u8), Vec<(String, Tensor)>>,
}

/// `features.i.c.…` → `(i, c)`.
pub fn parse_choice_var(name: &str) -> Option<(usize, u8)> {
    let rest = name.strip_prefix("features.").or_else(|| name.split_once(".features.").map(|(_, r)| r))?;
    let mut it = rest.split('.');
    let i = it.next()?.parse().ok()?;
    let c = it.next()?.parse().ok()?;
    Some((i, c))
}

impl PathIndex {
    /// Indexes every trainable variable of `vs` (sorted by name for a stable order).
    pub fn new(vs: &nn::VarStore) -> PathIndex {
        let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let mut shared = Vec::new();
        let mut choice_vars: BTreeMap<(usize, u8), Vec<(String, Tensor)>> = BTreeMap::new();
        for (name, t) in vars {
            match parse_choice_var(&name) {
                Some(key) => choice_vars.entry(key).or_default().push((name, t)),
                None => shared.push((name, t)),
            }
        }
        PathIndex { shared, choice_vars }
    }

    /// The variables of path `arch`: shared ones, then each block's chosen op.
    pub fn vars<'a>(&'a self, arch: &'a Arch) -> impl Iterator<Item = &'a (String, Tensor)> + 'a {
        self.shared.iter().chain(
            arch.choices()
                .iter()
                .enumerate()
                .flat_map(move |(i, c)| self.choice_vars.get(&(i, c.id())).into_iter().flatten()),
        )
    }

    /// The variables of several paths, each once: shared ones, then each block's chosen ops in
    /// the order the paths first use them.
    pub fn union_vars<'a>(&'a self, archs: &'a [Arch]) -> Vec<&'a (String, Tensor)> {
        if let [arch] = archs {
            // One path per step (the usual case): its variables are distinct already.
            return self.vars(arch).collect();
        }
        let mut seen = std::collections::HashSet::new();
        archs.iter().flat_map(|a| self.vars(a)).filter(|(name, _)| seen.insert(name.as_str())).collect()
    }

    /// Every indexed variable.
    pub fn all(&self) -> impl Iterator<Item = &(String, Tensor)> {
        self.shared.iter().chain(self.choice_vars.values().flatten())
    }
}

//! A Welcome's ratchet tree in parts, both ways: the server sends a large tree as
//! [`ServerMsg::TreePart`]s before a Welcome without it (the WebSocket writer keeps the
//! capacity of the largest frame it ever wrote, and a tree of a room of 1,000 is 283 KB, 377 KB
//! in JSON, which every joiner's connection would then hold), and the joiner puts the parts
//! back together, bounded by [`MAX_TREE_LEN`].

use crate::{Bytes, ServerMsg, MAX_TREE_LEN, TREE_PART_LEN};

/// The messages that carry `m`: a Welcome whose tree is over [`TREE_PART_LEN`] becomes tree
/// parts and then the Welcome without its tree; anything else goes as it is.
pub fn split_tree(m: ServerMsg) -> Vec<ServerMsg> {
    match m {
        ServerMsg::Welcome {
            welcome,
            ratchet_tree,
        } if ratchet_tree.0.len() > TREE_PART_LEN => {
            let mut out: Vec<ServerMsg> = ratchet_tree
                .0
                .chunks(TREE_PART_LEN)
                .map(|c| ServerMsg::TreePart {
                    part: Bytes(c.to_vec()),
                })
                .collect();
            out.push(ServerMsg::Welcome {
                welcome,
                ratchet_tree: Bytes(Vec::new()),
            });
            out
        }
        m => vec![m],
    }
}

/// The tree parts received before a Welcome.
#[derive(Debug, Default)]
pub struct TreeParts {
    tree: Vec<u8>,
}

/// More tree parts than [`MAX_TREE_LEN`] allows: they were dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TreeTooLarge;

impl TreeParts {
    /// Keeps one part. Parts beyond [`MAX_TREE_LEN`] in all drop everything kept.
    pub fn add(&mut self, part: &[u8]) -> Result<(), TreeTooLarge> {
        if self.tree.len() + part.len() > MAX_TREE_LEN {
            self.tree = Vec::new();
            return Err(TreeTooLarge);
        }
        self.tree.extend_from_slice(part);
        Ok(())
    }

    /// The tree of the Welcome that came: its own, or else the parts before it (which are
    /// used up either way).
    pub fn tree_for(&mut self, welcome_tree: Bytes) -> Bytes {
        let parts = std::mem::take(&mut self.tree);
        if welcome_tree.0.is_empty() {
            Bytes(parts)
        } else {
            welcome_tree
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_tree_goes_in_parts_that_join_back_into_the_same_welcome() {
        let tree: Vec<u8> = (0..300_000u32).map(|i| (i * 7) as u8).collect();
        let msgs = split_tree(ServerMsg::Welcome {
            welcome: Bytes(vec![1, 2, 3]),
            ratchet_tree: Bytes(tree.clone()),
        });
        assert_eq!(msgs.len(), tree.len().div_ceil(TREE_PART_LEN) + 1);
        let mut parts = TreeParts::default();
        for m in &msgs[..msgs.len() - 1] {
            let ServerMsg::TreePart { part } = m else {
                panic!("{m:?}")
            };
            assert!(part.0.len() <= TREE_PART_LEN);
            // Each part is a small frame on the wire.
            assert!(m.encode().len() < 2 * TREE_PART_LEN);
            parts.add(&part.0).unwrap();
        }
        let Some(ServerMsg::Welcome {
            welcome,
            ratchet_tree,
        }) = msgs.last().cloned()
        else {
            panic!("{:?}", msgs.last())
        };
        assert_eq!(welcome.0, [1, 2, 3]);
        assert!(ratchet_tree.0.is_empty());
        assert_eq!(parts.tree_for(ratchet_tree).0, tree);
        // A small tree stays inside its Welcome.
        let small = split_tree(ServerMsg::Welcome {
            welcome: Bytes(vec![1]),
            ratchet_tree: Bytes(vec![2; 100]),
        });
        assert_eq!(small.len(), 1);
    }

    #[test]
    fn parts_beyond_the_bound_are_dropped() {
        let mut parts = TreeParts::default();
        let part = vec![0; TREE_PART_LEN];
        let mut refused = false;
        for _ in 0..MAX_TREE_LEN / TREE_PART_LEN + 1 {
            refused |= parts.add(&part).is_err();
        }
        assert!(refused);
        assert!(parts.tree_for(Bytes(Vec::new())).0.len() < TREE_PART_LEN);
    }
}

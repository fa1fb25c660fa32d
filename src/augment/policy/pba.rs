//! Population Based Augmentation: the published CIFAR-10 schedule (Ho et al., 2019), parsed,
//! stretched to the run's epoch count and applied per image as the authors' code does.
//!
//! The schedule file ships in `datasets/policies/` (Apache-2.0, see the licence beside it) and is
//! compiled into the binary.

use super::op::{apply as apply_op, Canvas, Entry, Op};

/// The schedule the PBA authors found on reduced CIFAR-10 (`rcifar10_16_wrn.txt`).
pub const CIFAR10_SCHEDULE: &str =
    include_str!("../../../datasets/policies/pba-cifar10-schedule.txt");
/// Epochs the published schedule covers.
pub const SCHEDULE_EPOCHS: usize = 200;
/// Entries per policy: every operation twice.
pub const ENTRIES: usize = 30;

/// One PBA policy: 30 `(op, probability, level)` entries.
pub type Policy = [Entry; ENTRIES];

/// Errors in a schedule file.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// A line could not be read as `[trial, trial, epoch, epoch, [60 ints], [60 ints]]`.
    #[error("schedule line {line}: {reason}")]
    Line { line: usize, reason: String },
    /// The file holds no line.
    #[error("schedule holds no policy line")]
    Empty,
}

/// A PBA schedule: policies and the epoch segments they cover, for a run of `epochs` epochs.
#[derive(Clone, Debug)]
pub struct Schedule {
    policies: Vec<Policy>,
    /// Segment lengths in the published 200-epoch schedule, one per policy.
    published: Vec<usize>,
    /// First epoch of each policy's segment in this run, plus the run's length at the end.
    starts: Vec<usize>,
}

impl Schedule {
    /// Parses a schedule file and stretches it to `epochs` epochs.
    pub fn parse(text: &str, epochs: usize) -> Result<Schedule, ParseError> {
        let mut lines = Vec::new();
        for (n, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            lines.push(parse_line(line).map_err(|reason| ParseError::Line {
                line: n + 1,
                reason,
            })?);
        }
        let first = lines.first().ok_or(ParseError::Empty)?;
        // Segment 0: line 0's old policy until its clone epoch; segment i: line i-1's new policy
        // until line i's clone epoch; the last new policy runs to epoch 200.
        let mut policies = vec![first.old];
        let mut published = vec![first.clone_epoch];
        for (i, l) in lines.iter().enumerate() {
            let end = lines
                .get(i + 1)
                .map_or(SCHEDULE_EPOCHS, |next| next.clone_epoch);
            if end < l.clone_epoch || end > SCHEDULE_EPOCHS {
                return Err(ParseError::Line {
                    line: i + 2,
                    reason: format!("clone epoch {end} goes back before {}", l.clone_epoch),
                });
            }
            policies.push(l.new);
            published.push(end - l.clone_epoch);
        }
        let mut schedule = Schedule {
            policies,
            published,
            starts: Vec::new(),
        };
        schedule.stretch(epochs);
        Ok(schedule)
    }

    /// The published CIFAR-10 schedule stretched to `epochs`.
    pub fn cifar10(epochs: usize) -> Schedule {
        Schedule::parse(CIFAR10_SCHEDULE, epochs).expect("the shipped schedule parses")
    }

    /// Re-stretches to a run of `epochs` epochs: each segment lasts `⌊len·E/200⌋` epochs and
    /// the last policy fills what is left.
    pub fn stretch(&mut self, epochs: usize) {
        let n = self.published.len();
        let mut starts = Vec::with_capacity(n + 1);
        let mut at = 0;
        for &len in &self.published[..n - 1] {
            starts.push(at);
            at += len * epochs / SCHEDULE_EPOCHS;
        }
        starts.push(at.min(epochs));
        starts.push(epochs);
        self.starts = starts;
    }

    /// Length in epochs of each policy's segment in this run (sums to the run's epochs).
    pub fn segment_lengths(&self) -> Vec<usize> {
        self.starts.windows(2).map(|w| w[1] - w[0]).collect()
    }

    /// Segment lengths of the published 200-epoch schedule.
    pub fn published_lengths(&self) -> &[usize] {
        &self.published
    }

    /// Every policy, in schedule order.
    pub fn policies(&self) -> &[Policy] {
        &self.policies
    }

    /// The policy in force at `epoch` (0-based; epochs past the end use the last policy).
    pub fn policy_at(&self, epoch: usize) -> &Policy {
        let k = self.starts[1..]
            .iter()
            .position(|&end| epoch < end)
            .unwrap_or(self.policies.len() - 1);
        &self.policies[k.min(self.policies.len() - 1)]
    }
}

struct Line {
    clone_epoch: usize,
    old: Policy,
    new: Policy,
}

/// Parses `['9', '8', 11, 12, [60 ints], [60 ints]]`.
fn parse_line(line: &str) -> Result<Line, String> {
    let body = line
        .trim()
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .ok_or("not a [...] list")?;
    let open = body.find('[').ok_or("no policy lists")?;
    let head: Vec<&str> = body[..open]
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if head.len() != 4 {
        return Err(format!("expected 4 leading items, found {}", head.len()));
    }
    let clone_epoch = head[3]
        .parse::<usize>()
        .map_err(|e| format!("clone epoch {:?}: {e}", head[3]))?;
    let lists: Vec<&str> = body[open..]
        .split(']')
        .map(|s| {
            s.trim()
                .trim_start_matches(',')
                .trim()
                .trim_start_matches('[')
        })
        .filter(|s| !s.is_empty())
        .collect();
    if lists.len() != 2 {
        return Err(format!("expected 2 policy lists, found {}", lists.len()));
    }
    let old = parse_policy(lists[0])?;
    let new = parse_policy(lists[1])?;
    Ok(Line {
        clone_epoch,
        old,
        new,
    })
}

/// 60 integers: two halves of 15 `(probability×10, level)` pairs in [`Op::PBA_ORDER`].
fn parse_policy(list: &str) -> Result<Policy, String> {
    let values: Vec<u8> = list
        .split(',')
        .map(|v| v.trim().parse::<u8>().map_err(|e| format!("{v:?}: {e}")))
        .collect::<Result<_, _>>()?;
    if values.len() != 2 * ENTRIES {
        return Err(format!(
            "a policy has {} numbers, expected {}",
            values.len(),
            2 * ENTRIES
        ));
    }
    if let Some(v) = values.iter().find(|&&v| v > 10) {
        return Err(format!("value {v} outside 0..=10"));
    }
    Ok(std::array::from_fn(|k| {
        let (half, op) = (k / 15, k % 15);
        let base = half * 30 + 2 * op;
        Entry {
            op: Op::PBA_ORDER[op],
            prob: values[base] as f32 / 10.0,
            level: values[base + 1],
        }
    }))
}

/// Applies a policy the way the authors' "cifar10" mode does: draw how many ops (0, 1, 2 with
/// probabilities 0.2, 0.3, 0.5), shuffle the 30 entries, walk them applying each with its
/// probability, and stop once that many have been applied. Returns the number applied.
pub fn apply(
    policy: &Policy,
    rng: &mut fastrand::Rng,
    img: &mut [u8],
    canvas: &mut Canvas,
) -> usize {
    let u = rng.f64();
    let count = if u < 0.2 {
        0
    } else if u < 0.5 {
        1
    } else {
        2
    };
    if count == 0 {
        return 0;
    }
    let mut order: [u8; ENTRIES] = std::array::from_fn(|i| i as u8);
    rng.shuffle(&mut order);
    let mut applied = 0;
    for &k in &order {
        let e = policy[k as usize];
        if rng.f32() < e.prob {
            apply_op(e.op, e.level, rng, img, canvas);
            applied += 1;
            if applied == count {
                break;
            }
        }
    }
    applied
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_sum_to_the_run_length() {
        for epochs in [200, 230, 10, 1, 1000] {
            let s = Schedule::cifar10(epochs);
            let lens = s.segment_lengths();
            assert_eq!(lens.len(), 17);
            assert_eq!(lens.iter().sum::<usize>(), epochs, "E = {epochs}: {lens:?}");
        }
    }

    #[test]
    fn published_segments_follow_the_clone_epochs() {
        let s = Schedule::cifar10(200);
        let clone_epochs = [
            12, 34, 54, 74, 75, 81, 84, 111, 117, 138, 144, 153, 160, 177, 183, 195,
        ];
        let mut want = vec![12];
        want.extend(clone_epochs.windows(2).map(|w| w[1] - w[0]));
        want.push(200 - 195);
        assert_eq!(s.published_lengths(), want.as_slice());
        assert_eq!(s.segment_lengths(), want);
    }

    #[test]
    fn policy_at_matches_the_file() {
        let s = Schedule::cifar10(200);
        // Epochs 0..12: line 0's old policy, all zeros.
        assert!(s.policy_at(0).iter().all(|e| e.prob == 0.0 && e.level == 0));
        assert!(s.policy_at(11).iter().all(|e| e.prob == 0.0));
        // Epoch 12: line 0's new policy: [0, 3, 3, 7, 1, 9, ...] -> Rotate p 0.0 m 3,
        // TranslateX p 0.3 m 7, TranslateY p 0.1 m 9.
        let p = s.policy_at(12);
        assert_eq!((p[0].op, p[0].prob, p[0].level), (Op::Rotate, 0.0, 3));
        assert_eq!((p[1].op, p[1].prob, p[1].level), (Op::TranslateX, 0.3, 7));
        assert_eq!((p[2].op, p[2].prob, p[2].level), (Op::TranslateY, 0.1, 9));
        // Second half starts at value 30: [0, 0, 1, 0, 3, 0, ...] -> Rotate p 0 m 0, TranslateX p 0.1.
        assert_eq!((p[15].op, p[15].prob, p[15].level), (Op::Rotate, 0.0, 0));
        assert_eq!((p[16].op, p[16].prob), (Op::TranslateX, 0.1));
        // The last policy (from epoch 195) starts [0, 6, 6, 6, 10, 0 ...].
        let last = s.policy_at(199);
        assert_eq!((last[1].prob, last[1].level), (0.6, 6));
        assert_eq!((last[2].prob, last[2].level), (1.0, 0));
        assert_eq!(s.policy_at(10_000), last);
        // Each line's old policy is the previous line's new one: the parse saw 16 lines.
        assert_eq!(s.policies().len(), 17);
    }

    #[test]
    fn stretched_schedule_keeps_order_and_proportion() {
        let s = Schedule::cifar10(230);
        let lens = s.segment_lengths();
        assert_eq!(lens[0], 12 * 230 / 200);
        // The policy in force at 100/200 of the run is the same in both lengths.
        let base = Schedule::cifar10(200);
        assert_eq!(s.policy_at(115), base.policy_at(100));
    }

    #[test]
    fn malformed_lines_are_reported_with_their_number() {
        let bad = "['1', '2', 3, 4, [0, 1], [2, 3]]";
        let err = Schedule::parse(bad, 10).unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");
        assert!(matches!(Schedule::parse("", 10), Err(ParseError::Empty)));
    }
}

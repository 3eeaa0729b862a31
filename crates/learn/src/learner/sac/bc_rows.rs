//! The BC term's weight: a mean over the rows that imitate (the prior
//! data), not over the whole batch.

use super::*;

#[test]
fn the_bc_weight_is_a_mean_over_the_imitated_rows_only() {
    let rb = ReplayBuffer::new(2, 1, 4);
    let d = |rows, imitate| Draw {
        from: &rb,
        rows,
        imitate,
    };
    let (online, demos) = (d(3, false), d(2, true));
    assert_eq!(
        bc_weights(&[&online, &demos], 0.5),
        [0.0, 0.0, 0.0, 0.25, 0.25]
    );
    let both = d(3, true);
    assert_eq!(bc_weights(&[&both, &demos], 1.0), [0.2; 5]);
    assert_eq!(bc_weights(&[&online], 1.0), [0.0; 3]);
}

//! Splitting a long recording into clips at quiet points.

/// Consecutive `(start, end)` sample ranges covering `wave`, each at most `max` samples long.
/// A cut goes where the short-time energy is lowest in the second half of the allowed span, so
/// words are rarely cut; a recording without pauses is cut at the limit.
pub fn split_points(wave: &[f32], rate: u32, max: usize) -> Vec<(usize, usize)> {
    let max = max.max(1);
    // 25 ms energy windows every 10 ms.
    let win = (rate as usize / 40).max(1);
    let hop = (rate as usize / 100).max(1);
    let mut ranges = Vec::new();
    let mut start = 0;
    while wave.len() - start > max {
        let limit = start + max;
        let earliest = start + max / 2;
        let mut best = (f64::INFINITY, limit);
        let mut pos = earliest;
        while pos + win <= limit {
            let energy: f64 = wave[pos..pos + win]
                .iter()
                .map(|&s| (s as f64).powi(2))
                .sum();
            // Later cuts win ties: fewer, longer clips.
            if energy <= best.0 {
                best = (energy, pos + win / 2);
            }
            pos += hop;
        }
        let cut = best.1.clamp(start + 1, limit);
        ranges.push((start, cut));
        start = cut;
    }
    ranges.push((start, wave.len()));
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_audio_is_one_clip() {
        assert_eq!(split_points(&[0.1; 100], 16_000, 1000), vec![(0, 100)]);
    }

    #[test]
    fn cuts_cover_everything_and_prefer_silence() {
        let rate = 1000;
        // 10 s of tone with a silent stretch at 6.5 s-6.7 s; clips of at most 8 s.
        let mut wave: Vec<f32> = (0..10_000).map(|i| (i as f32 * 0.3).sin()).collect();
        wave[6500..6700].fill(0.0);
        let ranges = split_points(&wave, rate, 8000);
        assert_eq!(ranges.len(), 2);
        assert_eq!(ranges[0].0, 0);
        assert_eq!(ranges[1].1, wave.len());
        assert_eq!(ranges[0].1, ranges[1].0);
        assert!(
            (6500..6700).contains(&ranges[0].1),
            "cut at {}",
            ranges[0].1
        );
    }

    #[test]
    fn no_pause_cuts_at_most_at_the_limit() {
        let wave = vec![0.5f32; 35_000];
        let ranges = split_points(&wave, 1000, 10_000);
        assert!(ranges.iter().all(|(a, b)| b > a && b - a <= 10_000));
        assert_eq!(ranges.last().unwrap().1, 35_000);
        for pair in ranges.windows(2) {
            assert_eq!(pair[0].1, pair[1].0);
        }
    }
}

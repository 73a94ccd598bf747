//! The instruction-set level the kernels run at, found once when first asked.
//!
//! Builds carry no target features (the installers are portable), so every hot kernel exists
//! once per level, compiled with `#[target_feature]`, and is chosen here at run time.
//! `GEMMA_CHAT_CPU=baseline|avx2|avx512|amx|native` forces a level, for tests and benchmarks; a
//! level this CPU lacks is refused with a warning and the detected one kept.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

/// The variable that forces a level.
pub const LEVEL_VAR: &str = "GEMMA_CHAT_CPU";

/// Instruction-set levels, each including the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Whatever the build targets: SSE2 on x86-64, NEON on aarch64 (part of that target).
    Baseline,
    /// x86-64-v3: AVX2, FMA, F16C (every x86 CPU since about 2015).
    Avx2,
    /// AVX-512 F/BW/VL/DQ (Skylake-X, Zen 4 and later).
    Avx512,
    /// AVX-512 plus AMX-BF16 tiles the OS lets this process use (Sapphire Rapids and later).
    Amx,
}

impl Level {
    pub const ALL: [Level; 4] = [Level::Baseline, Level::Avx2, Level::Avx512, Level::Amx];

    pub fn name(self) -> &'static str {
        match self {
            Level::Baseline => "baseline",
            Level::Avx2 => "avx2",
            Level::Avx512 => "avx512",
            Level::Amx => "amx",
        }
    }

    /// What this CPU supports.
    pub fn detected() -> Level {
        static DETECTED: OnceLock<Level> = OnceLock::new();
        *DETECTED.get_or_init(detect)
    }

    /// The levels this CPU can run, lowest first: what tests cover.
    pub fn supported() -> impl Iterator<Item = Level> {
        Level::ALL.into_iter().filter(|l| *l <= Level::detected())
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Level {
    type Err = String;

    /// A level name, or `native` for the detected one.
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "native" => Ok(Level::detected()),
            name => Level::ALL
                .into_iter()
                .find(|l| l.name() == name)
                .ok_or_else(|| {
                    format!(
                        "unknown CPU level {s:?}; expected baseline, avx2, avx512, amx or native"
                    )
                }),
        }
    }
}

/// The level in use, as an index into [`Level::ALL`]; `u8::MAX` until first asked.
static CURRENT: AtomicU8 = AtomicU8::new(u8::MAX);

/// The level in use: the detected one, or the one [`LEVEL_VAR`] asks for when the CPU has it
/// (or the one last given to [`set_level`]).
#[inline]
pub fn level() -> Level {
    match CURRENT.load(Ordering::Relaxed) {
        u8::MAX => init_level(),
        i => Level::ALL[i as usize],
    }
}

#[cold]
fn init_level() -> Level {
    static INIT: OnceLock<Level> = OnceLock::new();
    INIT.get_or_init(|| {
        let detected = Level::detected();
        let chosen = match std::env::var(LEVEL_VAR) {
            Err(_) => detected,
            Ok(asked) => match asked.parse::<Level>() {
                Ok(l) if l <= detected => l,
                Ok(l) => {
                    tracing::warn!("{LEVEL_VAR}={asked}: this CPU has no {l}; using {detected}");
                    detected
                }
                Err(e) => {
                    tracing::warn!("{LEVEL_VAR}: {e}; using {detected}");
                    detected
                }
            },
        };
        tracing::info!("CPU kernels: {chosen} (detected {detected})");
        let _ =
            CURRENT.compare_exchange(u8::MAX, chosen as u8, Ordering::Relaxed, Ordering::Relaxed);
        chosen
    });
    Level::ALL[CURRENT.load(Ordering::Relaxed) as usize]
}

/// Switch every kernel to `level` from now on (benchmarks and tests compare levels in one
/// process); refused when the CPU lacks it.  Returns the level it replaces.
pub fn set_level(level: Level) -> Result<Level, String> {
    if level > Level::detected() {
        return Err(format!(
            "this CPU has no {level} (it has {})",
            Level::detected()
        ));
    }
    let previous = self::level();
    CURRENT.store(level as u8, Ordering::Relaxed);
    Ok(previous)
}

/// Whether the level in use has AVX-512 VNNI too (its 8- and 16-bit dot-product instructions,
/// on every AVX-512 CPU since Cascade Lake and Zen 4): the 512-bit integer kernels need it, and
/// the AVX-512 level without it runs the AVX2 ones.
pub fn has_avx512_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static VNNI: OnceLock<bool> = OnceLock::new();
        level() >= Level::Avx512
            && *VNNI.get_or_init(|| std::arch::is_x86_feature_detected!("avx512vnni"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

#[cfg(target_arch = "x86_64")]
fn detect() -> Level {
    use std::arch::is_x86_feature_detected as has;
    if !(has!("avx2") && has!("fma") && has!("f16c")) {
        return Level::Baseline;
    }
    if !(has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("avx512dq")) {
        return Level::Avx2;
    }
    if crate::amx::enable_tiles() {
        Level::Amx
    } else {
        Level::Avx512
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> Level {
    Level::Baseline
}

/// Defines `$name` once per level from one body: the body is compiled inline into a
/// `#[target_feature]` copy for each x86 level, so its loops vectorise to that width, and the
/// copy for [`level`] runs.  For element-wise loops that the compiler vectorises by itself.
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma,f16c")]
                fn avx2($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
                #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
                fn avx512($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
                match $crate::cpu::level() {
                    // SAFETY: `level` reports only what the CPU has.
                    $crate::cpu::Level::Avx512 | $crate::cpu::Level::Amx => unsafe { return avx512($($arg),*) },
                    // SAFETY: as above.
                    $crate::cpu::Level::Avx2 => unsafe { return avx2($($arg),*) },
                    $crate::cpu::Level::Baseline => {}
                }
            }
            body($($arg),*)
        }
    };
}
pub(crate) use multiversion;

/// Runs `check` at every level this CPU supports, one level at a time (tests that switch levels
/// take turns).
#[cfg(test)]
pub(crate) fn at_every_level(check: impl Fn(Level)) {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let before = level();
    for l in Level::supported() {
        set_level(l).unwrap();
        check(l);
    }
    set_level(before).unwrap();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_and_order() {
        assert_eq!("AVX2".parse::<Level>().unwrap(), Level::Avx2);
        assert_eq!("native".parse::<Level>().unwrap(), Level::detected());
        let err = "sse9".parse::<Level>().unwrap_err();
        assert!(err.contains("sse9") && err.contains("avx512"), "{err}");
        assert!(Level::Baseline < Level::Avx2 && Level::Avx512 < Level::Amx);
        assert!(Level::supported().any(|l| l == Level::Baseline));
        assert!(level() <= Level::detected());
        assert!(set_level(Level::Amx).is_ok() == (Level::detected() == Level::Amx));
    }
}

//! The builder as a pipeline of named steps, each timed and logged (as mkosi and gokrazy do).

use std::time::{Duration, Instant};

use crate::ImageError;

/// Runs steps in order and remembers how long each took.
#[derive(Debug, Default)]
pub struct Pipeline {
    /// (step name, duration), in the order they ran.
    pub timings: Vec<(&'static str, Duration)>,
}

impl Pipeline {
    /// Run one named step. The error of a failing step is wrapped with the step's name.
    pub fn step<T>(
        &mut self,
        name: &'static str,
        f: impl FnOnce() -> Result<T, ImageError>,
    ) -> Result<T, ImageError> {
        eprintln!("==> {name}");
        let start = Instant::now();
        let result = f();
        let took = start.elapsed();
        self.timings.push((name, took));
        match result {
            Ok(v) => {
                eprintln!("    {name}: done in {:.2} s", took.as_secs_f64());
                Ok(v)
            }
            Err(e) => Err(ImageError::Step {
                step: name,
                error: Box::new(e),
            }),
        }
    }

    /// Total time of every step so far.
    pub fn total(&self) -> Duration {
        self.timings.iter().map(|(_, d)| *d).sum()
    }
}

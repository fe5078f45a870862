//! A fixed pool of threads, each with its own PostgreSQL connection, fed by a bounded queue.
//! Redis's main thread only enqueues; it never waits for PostgreSQL. A full queue is refused at
//! once (`BUSY`), a job that waited past its deadline is answered without querying, and an
//! unreachable PostgreSQL is reported fast (`PGUNAVAILABLE`) while a shared backoff decides when
//! the next connection attempt may be made.

use crate::{config, guard};
use pg_redis_shared::Error;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A unit of work. It gets the thread's session, or the reason it cannot run (deadline passed
/// while queued), and must answer its client either way.
pub type Work = Box<dyn FnOnce(Result<&mut Session, Error>) + Send>;

pub struct Job {
    pub deadline: Instant,
    pub work: Work,
}

struct Queue {
    jobs: Mutex<VecDeque<Job>>,
    ready: Condvar,
}

/// How long an idle thread keeps polling the queue after its last job.
const SPIN_AFTER_JOB: Duration = Duration::from_micros(300);

static QUEUE: Queue = Queue { jobs: Mutex::new(VecDeque::new()), ready: Condvar::new() };
static STOPPING: AtomicBool = AtomicBool::new(false);
static THREADS: Mutex<Vec<JoinHandle<()>>> = Mutex::new(Vec::new());
/// Threads currently running a job (for INFO and for refusing an unload while busy).
pub static BUSY_THREADS: AtomicUsize = AtomicUsize::new(0);
/// Jobs in the queue (read without the lock by spinning threads).
static QUEUED: AtomicUsize = AtomicUsize::new(0);
pub use crate::session::{reset_health, Session, CONNECTIONS};

/// Queues a job, or refuses it at once when the queue is full.
#[expect(clippy::result_large_err, reason = "a refused job goes back to its caller, who must still answer its client")]
pub fn submit(job: Job) -> Result<(), (Error, Job)> {
    let mut jobs = QUEUE.jobs.lock().unwrap_or_else(|e| e.into_inner());
    if jobs.len() >= config::queue_max() {
        let e = Error::Busy {
            what: format!("{} requests already wait for PostgreSQL (redis_pg.queue_max); retry later", jobs.len()),
        };
        return Err((e, job));
    }
    jobs.push_back(job);
    QUEUED.fetch_add(1, Ordering::AcqRel);
    drop(jobs);
    QUEUE.ready.notify_one();
    Ok(())
}

pub fn queue_depth() -> usize {
    QUEUED.load(Ordering::Acquire)
}

/// Starts or stops threads until `pool_size` run.
pub fn resize() {
    let want = config::pool_size();
    let mut threads = THREADS.lock().unwrap_or_else(|e| e.into_inner());
    threads.retain(|t| !t.is_finished());
    STOPPING.store(false, Ordering::Release);
    while threads.len() < want {
        let index = threads.len();
        match std::thread::Builder::new()
            .name(format!("redis_pg-pg{index}"))
            .spawn(move || guard::thread_body("a pool thread", || run_thread(index)))
        {
            Ok(t) => threads.push(t),
            Err(e) => {
                guard::log_warning(&format!("cannot start pool thread {index}: {e}"));
                break;
            }
        }
    }
    // Threads with an index >= pool_size notice and exit by themselves.
    QUEUE.ready.notify_all();
}

/// Stops every thread (module unload). Fails if a thread is still working on a request.
pub fn shutdown() -> Result<(), String> {
    // A thread that just answered may still be finishing up: give it a moment.
    let deadline = Instant::now() + Duration::from_secs(2);
    while (BUSY_THREADS.load(Ordering::Acquire) > 0 || queue_depth() > 0) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    if BUSY_THREADS.load(Ordering::Acquire) > 0 || queue_depth() > 0 {
        return Err("PostgreSQL requests are still in flight".into());
    }
    {
        // Under the queue lock, so no thread can check the flag and then sleep through the notify.
        let _jobs = QUEUE.jobs.lock().unwrap_or_else(|e| e.into_inner());
        STOPPING.store(true, Ordering::Release);
        QUEUE.ready.notify_all();
    }
    let threads = std::mem::take(&mut *THREADS.lock().unwrap_or_else(|e| e.into_inner()));
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

fn run_thread(index: usize) {
    let mut session = Session::default();
    let mut last_job = Instant::now() - SPIN_AFTER_JOB;
    loop {
        let job = {
            let mut jobs = QUEUE.jobs.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if STOPPING.load(Ordering::Acquire) || index >= config::pool_size() {
                    session.close();
                    return;
                }
                if let Some(job) = jobs.pop_front() {
                    // Counted busy before the lock goes, so shutdown never sees an idle pool
                    // while a job is out of the queue.
                    BUSY_THREADS.fetch_add(1, Ordering::AcqRel);
                    QUEUED.fetch_sub(1, Ordering::AcqRel);
                    break job;
                }
                // Right after a job, spin briefly (on an atomic, without the lock) before
                // sleeping: under load the next job usually comes within microseconds, and
                // waking a sleeping thread costs more.
                if last_job.elapsed() < SPIN_AFTER_JOB {
                    drop(jobs);
                    while QUEUED.load(Ordering::Acquire) == 0 && last_job.elapsed() < SPIN_AFTER_JOB {
                        std::hint::spin_loop();
                        std::thread::yield_now();
                    }
                    jobs = QUEUE.jobs.lock().unwrap_or_else(|e| e.into_inner());
                    continue;
                }
                jobs = QUEUE
                    .ready
                    .wait_timeout(jobs, Duration::from_millis(500))
                    .map(|(g, _)| g)
                    .unwrap_or_else(|e| e.into_inner().0);
            }
        };
        let Job { deadline, work } = job;
        guard::callback("a PostgreSQL request", || {
            if Instant::now() >= deadline {
                work(Err(Error::Timeout {
                    what: "the request waited too long for a free PostgreSQL connection".into(),
                    ms: config::query_timeout().as_millis() as u64,
                }));
            } else {
                work(Ok(&mut session));
            }
        });
        BUSY_THREADS.fetch_sub(1, Ordering::AcqRel);
        last_job = Instant::now();
    }
}

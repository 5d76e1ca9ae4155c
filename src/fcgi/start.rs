//! What `wsgi-fcgi` does with its [`Plan`]: `--check`; one process; or a
//! master (`crate::process::master`) with `--workers` worker processes,
//! forked with `--preload` from a template that imported the app.

use crate::core::exit::Exit;
use crate::fcgi::cli::Plan;
use std::cell::RefCell;
use std::rc::Rc;

use crate::fcgi::worker::listener::{self, Bind, Listener};
use crate::fcgi::worker::{self, WorkerError, WorkerOptions};
use crate::process::ToMaster;
use crate::process::master::pm::Pm;
use crate::process::master::template::{Link, TemplateMain};
use crate::process::master::{self, MasterOptions};

/// Serve as `plan` says; returns the exit status.
pub fn serve(plan: Plan) -> anyhow::Result<i32> {
    if plan.check {
        return run_check(&plan.options);
    }
    let mut plan = plan;
    master_to_remove_the_socket_file(&mut plan.options);
    let options = &plan.options;
    let listeners = worker::listeners(options)?;
    // From here on, whatever happens, the socket files go with this process.
    let _socket_files = worker::SocketFiles(options);
    worker::warn_if_root(options);
    if options.workers == 0 {
        return Ok(worker_main(options, listeners, None, None));
    }
    run_master(&plan, listeners)
}

/// A process that dropped its privileges (`--user`, started as root)
/// cannot remove a socket file from a root-owned directory at the end: a
/// master (which stays root, and tells systemd READY=1 itself) with one
/// worker can.
fn master_to_remove_the_socket_file(options: &mut WorkerOptions) {
    if options.workers == 0
        && options.user.is_some()
        && nix::unistd::geteuid().is_root()
        && options.binds.iter().any(|b| matches!(b, Bind::Unix(_)))
    {
        crate::log_info!(
            "--user with a unix socket file: running a master with one worker, which keeps \
             the privileges to remove the socket file when it stops"
        );
        options.workers = 1;
    }
}

/// `--workers`: the master, forking workers that serve on copies of
/// `listeners` (with `--preload`, from a template that imported the app).
fn run_master(plan: &Plan, listeners: Vec<Listener>) -> anyhow::Result<i32> {
    let options = &plan.options;
    let board = board_for(plan)?;
    let master_options = master_options(plan, &listeners);
    let copies = || listeners.iter().map(|l| l.try_clone()).collect();
    let template_main = plan
        .preload
        .then(|| Box::new(|link: Link| pool_template(options, &copies, link)) as TemplateMain<'_>);
    let code = master::run(
        master_options,
        Box::new(|ready| match copies() {
            Ok(copies) => worker_main(options, copies, Some(ready), None),
            Err(err) => {
                eprintln!("wsgi-fcgi: worker: {err}");
                Exit::Setup.code()
            }
        }),
        template_main,
        board,
    )?;
    Ok(code)
}

/// What the master needs of `plan`, which serves on `listeners`.
fn master_options(plan: &Plan, listeners: &[Listener]) -> MasterOptions {
    let options = &plan.options;
    MasterOptions {
        workers: options.workers,
        pm: plan.pm.clone(),
        threads: options.threads,
        listeners: listeners.iter().map(|l| l.raw().0).collect(),
        graceful_timeout: options.graceful_timeout,
        max_lifetime: plan.max_lifetime,
        max_rss: plan.max_rss,
        request_timeout: options.timeouts.request,
    }
}

/// Several pools (`[pool.NAME]` in `--config`) under one master: every
/// pool's sockets are bound first (as started: root may bind what the
/// pools' users could not), then the master supervises each pool's
/// workers; HUP reads `args`' configuration again ([`PoolSet`]). With
/// `--check`, each pool's app is imported in turn.
pub fn serve_pools(
    pools: Vec<(String, Plan)>,
    args: Vec<std::ffi::OsString>,
) -> anyhow::Result<i32> {
    if pools.iter().any(|(_, plan)| plan.check) {
        for (name, plan) in &pools {
            println!("pool {name}:");
            let code = run_check(&plan.options)?;
            if code != Exit::Success.code() {
                return Ok(code);
            }
        }
        return Ok(Exit::Success.code());
    }
    let set = PoolSet {
        args,
        bound: RefCell::new(Vec::new()),
    };
    // From here on, whatever happens, the socket files go with this process.
    let _socket_files = SetSocketFiles(&set);
    let specs = set.specs(pools)?;
    Ok(master::run_pools(specs, &set)?)
}

/// The pools' sockets: every address bound, shared by the workers'
/// closures of the pools that listen there, so that a HUP keeps (never
/// rebinds) the sockets of the pools still configured.
struct PoolSet {
    args: Vec<std::ffi::OsString>,
    bound: RefCell<Vec<(Bind, Rc<Listener>)>>,
}

impl PoolSet {
    /// Each pool's spec: its sockets (bound now, or kept), its worker.
    fn specs(&self, pools: Vec<(String, Plan)>) -> anyhow::Result<Vec<master::PoolSpec<'static>>> {
        let mut fresh: Vec<(Bind, Rc<Listener>)> = Vec::new();
        let mut per_pool = Vec::new();
        for (name, plan) in &pools {
            let mut listeners = Vec::new();
            for bind in &plan.options.binds {
                let kept = self
                    .bound
                    .borrow()
                    .iter()
                    .find(|(b, _)| b == bind)
                    .map(|(_, l)| l.clone());
                let listener = match kept {
                    Some(listener) => listener,
                    None => {
                        let bound = listener::bind(bind, &plan.options.unix, plan.options.backlog);
                        let listener = match bound {
                            Ok(listener) => listener,
                            Err(e) => {
                                // (Bound for nothing: their files go too.)
                                for (bind, _) in &fresh {
                                    remove_socket_file(bind);
                                }
                                anyhow::bail!("pool {name}: {e}");
                            }
                        };
                        let listener = Rc::new(listener);
                        fresh.push((bind.clone(), listener.clone()));
                        listener
                    }
                };
                listeners.push(listener);
            }
            per_pool.push(listeners);
        }
        // All bound: the sockets no pool uses any more go (their files too).
        let in_use = |b: &Bind| pools.iter().any(|(_, p)| p.options.binds.contains(b));
        let mut bound = self.bound.borrow_mut();
        for (bind, _) in bound.iter().filter(|(b, _)| !in_use(b)) {
            remove_socket_file(bind);
        }
        bound.retain(|(b, _)| in_use(b));
        bound.extend(fresh);
        drop(bound);
        let mut specs = Vec::new();
        for ((name, plan), listeners) in pools.into_iter().zip(per_pool) {
            if plan.options.user.is_none() && nix::unistd::geteuid().is_root() {
                crate::log_warn!("pool {name}: the app runs as root (no `user`)");
            }
            let options = MasterOptions {
                listeners: listeners.iter().map(|l| l.raw().0).collect(),
                ..master_options(&plan, &[])
            };
            let template_main = plan.preload.then(|| {
                let options = plan.options.clone();
                let listeners = listeners.clone();
                let copies = move || listeners.iter().map(|l| l.try_clone()).collect();
                Box::new(move |link: Link| pool_template(&options, &copies, link))
                    as TemplateMain<'static>
            });
            let worker_options = plan.options;
            let worker_main: master::WorkerMain<'static> = Box::new(move |ready: ToMaster| {
                match listeners.iter().map(|l| l.try_clone()).collect() {
                    Ok(copies) => worker_main(&worker_options, copies, Some(ready), None),
                    Err(err) => {
                        eprintln!("wsgi-fcgi: worker: {err}");
                        Exit::Setup.code()
                    }
                }
            });
            specs.push(master::PoolSpec {
                name,
                options,
                worker_main,
                template_main,
            });
        }
        Ok(specs)
    }
}

impl<'a> master::Reconfigure<'a> for PoolSet {
    fn read(&self) -> Result<Vec<master::PoolSpec<'a>>, String> {
        let pools = match crate::fcgi::pools::read(&self.args) {
            Ok(Some(pools)) => pools,
            Ok(None) => {
                return Err("the configuration file has no [pool.NAME] table any more".into());
            }
            Err(e) => return Err(format!("{e:#}")),
        };
        self.specs(pools).map_err(|e| format!("{e:#}"))
    }
}

/// Removes the pools' socket files when the master goes.
struct SetSocketFiles<'a>(&'a PoolSet);

impl Drop for SetSocketFiles<'_> {
    fn drop(&mut self) {
        for (bind, _) in self.0.bound.borrow().iter() {
            remove_socket_file(bind);
        }
    }
}

fn remove_socket_file(bind: &Bind) {
    if let Bind::Unix(path) = bind {
        match listener::remove_socket_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => crate::log_warn!("cannot remove the socket file {}: {e}", path.display()),
        }
    }
}

/// The pool's scoreboard, shared by every worker forked from here on (the
/// status page; the master reads there what each app thread runs, for
/// --request-timeout and the process manager), when something needs it.
fn board_for(plan: &Plan) -> anyhow::Result<Option<&'static crate::process::scoreboard::Board>> {
    let options = &plan.options;
    if options.status_path.is_some()
        || options.ping_path.is_some()
        || options.timeouts.request.is_some()
        || plan.pm != Pm::Static
    {
        return Ok(Some(crate::process::scoreboard::create()?));
    }
    Ok(None)
}

/// `--check`: the options parsed (clap did that); unix socket directories
/// exist; then a child process imports the app as a worker would.
fn run_check(options: &WorkerOptions) -> anyhow::Result<i32> {
    for bind in &options.binds {
        if let Bind::Unix(path) = bind {
            let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
            if dir.is_some_and(|d| !d.is_dir()) {
                eprintln!(
                    "wsgi-fcgi --check: no directory for the socket {}",
                    path.display()
                );
                return Ok(Exit::Setup.code());
            }
        }
    }
    let started = std::time::Instant::now();
    // SAFETY: still single-threaded (no runtime, no Python yet).
    let child = match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Child => {
            let code = match worker::check_import(options) {
                Ok(()) => Exit::Success.code(),
                Err(WorkerError::AppLoad) => Exit::AppLoad.code(),
                Err(err) => {
                    eprintln!("wsgi-fcgi --check: {err}");
                    Exit::Setup.code()
                }
            };
            std::process::exit(code);
        }
        nix::unistd::ForkResult::Parent { child } => child,
    };
    let status = nix::sys::wait::waitpid(child, None)?;
    let app = options.app.as_deref().unwrap_or("the demo app");
    let code = match status {
        nix::sys::wait::WaitStatus::Exited(_, code) => code,
        _ => Exit::Setup.code(),
    };
    match code {
        c if c == Exit::Success.code() => println!(
            "wsgi-fcgi --check: configuration OK; {app} imported in {:.0} ms",
            started.elapsed().as_secs_f64() * 1000.0
        ),
        c if c == Exit::AppLoad.code() => {
            eprintln!("wsgi-fcgi --check: {app} does not import (traceback above)")
        }
        _ => eprintln!("wsgi-fcgi --check: the configuration is not usable (see above)"),
    }
    Ok(code)
}

/// A pool's template (`--preload`, `preload = true`): as the pool's user,
/// import the app once, then fork the pool's workers from it when the
/// master asks (`crate::process::master::template`), each serving on
/// `copies()` of the sockets; returns its exit status.
fn pool_template(
    options: &WorkerOptions,
    copies: &dyn Fn() -> std::io::Result<Vec<Listener>>,
    link: Link,
) -> i32 {
    let setup = |err: WorkerError| {
        eprintln!("wsgi-fcgi: template: {err}");
        Exit::Setup.code()
    };
    // As a worker does: the log opened first, then the privileges go —
    // before the app's code runs.
    let access_log = match worker::open_access_log(options) {
        Ok(log) => log,
        Err(e) => return setup(e),
    };
    if let Err(e) = worker::drop_privileges(options.user.as_deref(), options.group.as_deref()) {
        return setup(e);
    }
    let mut options = options.clone();
    options.user = None;
    options.group = None;
    let app = match worker::preload(&options) {
        Ok(app) => app,
        Err(err) => return exit_status(Err(err)),
    };
    warn_of_threads_at_import();
    let hooks = worker::PreloadFork::default();
    if let Err(e) = link.ready() {
        eprintln!("wsgi-fcgi: template: the master is gone: {e}");
        return Exit::Setup.code();
    }
    link.serve(&hooks, &|ready| match copies() {
        Ok(copies) => exit_status(worker::run_with_log(
            options.clone(),
            copies,
            Some(ready),
            Some(&app),
            access_log.clone(),
        )),
        Err(err) => {
            eprintln!("wsgi-fcgi: worker: {err}");
            Exit::Setup.code()
        }
    })
}

/// Threads the app started while it was imported do not exist in the
/// workers forked from the template: say so once, with the way out.
fn warn_of_threads_at_import() {
    let threads = std::fs::read_dir("/proc/self/task").map_or(1, |d| d.count());
    if threads > 1 {
        crate::log_warn!(
            "the app started {} thread(s) while it was imported; the workers, forked from the \
             imported app (--preload, the default with several workers), do not have them: if \
             the app needs them, use --no-preload (`preload = false`)",
            threads - 1
        );
    }
}

/// One worker process (or the only process); returns the exit status.
fn worker_main(
    options: &WorkerOptions,
    listeners: Vec<Listener>,
    ready: Option<ToMaster>,
    preloaded: Option<&pyo3::Py<pyo3::PyAny>>,
) -> i32 {
    exit_status(worker::run(options.clone(), listeners, ready, preloaded))
}

/// A worker's (or a template's) exit status for how it ended.
fn exit_status(result: Result<(), WorkerError>) -> i32 {
    match result {
        Ok(()) => Exit::Success.code(),
        Err(WorkerError::AppLoad) => {
            eprintln!("wsgi-fcgi: the application failed to load (traceback above)");
            Exit::AppLoad.code()
        }
        Err(err) => {
            eprintln!("wsgi-fcgi: {err}");
            Exit::Setup.code()
        }
    }
}

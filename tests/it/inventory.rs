//! The inventories and host strings ops people already have: Ansible YAML and
//! INI inventories, plain lists, `user@host:port`, ClusterShell's NodeSet
//! expressions (checked against ClusterShell itself), and `--rerun`.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::common::{HOST_PORT, TestHosts, exec, pushrun, summary, to_run};

/// `pushrun hosts ARGS`, run in `dir` with no inventory from the environment.
fn hosts_in(dir: &Path, args: &[&str]) -> crate::common::Run {
    let out = pushrun()
        .arg("hosts")
        .args(args)
        .current_dir(dir)
        .env_remove("PUSHRUN_HOSTS")
        .stdin(Stdio::null())
        .output()
        .expect("run pushrun hosts");
    to_run(out)
}

/// The host names `pushrun hosts` printed (the first word of each line).
fn names(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// The hosts a run printed output for, sorted.
fn hosts_with_output(stdout: &str) -> Vec<String> {
    let mut hosts: Vec<String> = stdout
        .lines()
        .filter_map(|l| l.split_once(": ").map(|(h, _)| h.trim_end().to_owned()))
        .collect();
    hosts.sort();
    hosts.dedup();
    hosts
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// ClusterShell's expansion of each expression, one line of names each, or
/// why it cannot be asked.
fn clustershell(exprs: &[&str]) -> Result<Vec<Vec<String>>, String> {
    let script = "import sys\nfrom ClusterShell.NodeSet import NodeSet\nfor e in sys.argv[1:]:\n    print(' '.join(NodeSet(e)))\n";
    let out = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(script)
        .args(exprs)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("no /usr/bin/python3: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "ClusterShell is not installed (apt-get install clustershell): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect())
}

#[test]
fn nodeset_expressions_expand_as_clustershell_expands_them() {
    let exprs = [
        "node[1-5/2]",
        "web[1-3]!web2",
        "node[1-3]&node[2-5]",
        "node[1-3]^node2",
        "node[1-3]^node[2-5]",
        "n[01-10]",
        "n[001-120]!n[010-100]",
        "a[1-2]b[3-4]",
        "rack[1-2]-node[01-03]",
        "x[1,3,5-7]",
        "x[1-20/5]",
        "x[0-100/25],y1",
        "node[1-10]!node[2-9/2]",
        "a,b,c!b",
        "n[1-9]&n[5-15]&n[7-20]",
        "n[1-4],m[1-2]^n[3-6]",
        "h[09-11]",
        "h[8-11]!h9",
        "10.0.0.[1-4]",
        "10.0.[0-1].[1-2]",
        "db[1-3],web[1-2]&web[2-3]",
        "n[1-3]!n[1-3],m1",
        "foo[1-100/33]",
        "node[1-3],node[2-4]",
        "c[1-2]x[05-06/1]y",
    ];
    let expected = match clustershell(&exprs) {
        Ok(expected) => expected,
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    assert_eq!(expected.len(), exprs.len());
    let dir = tempfile::tempdir().unwrap();
    for (expr, want) in exprs.iter().zip(expected) {
        let run = hosts_in(dir.path(), &["-w", expr]);
        assert_eq!(run.code, 0, "{expr}: {}", run.stderr);
        assert_eq!(
            sorted(names(&run.stdout)),
            sorted(want),
            "{expr}: pushrun and ClusterShell differ"
        );
    }
}

#[test]
fn bad_host_strings_are_refused_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    for (list, message) in [
        ("a;b", "pushrun: -w: bad host name \"a;b\"\n"),
        ("a$b", "pushrun: -w: bad host name \"a$b\"\n"),
        ("`id`", "pushrun: -w: bad host name \"`id`\"\n"),
        ("a'b", "pushrun: -w: bad host name \"a'b\"\n"),
        (
            "host:99999",
            "pushrun: -w: bad port \"99999\" in \"host:99999\"\n",
        ),
        (
            "@web",
            "pushrun: -w: @web is a group: groups need an inventory (--hosts FILE, PUSHRUN_HOSTS or ./hosts.yaml)\n",
        ),
    ] {
        let run = hosts_in(dir.path(), &["-w", list]);
        assert_eq!(run.code, 2, "{list}: {}", run.all());
        assert_eq!(run.stderr, message, "{list}");
    }
    // An empty intersection.
    let run = hosts_in(dir.path(), &["-w", "a&b"]);
    assert_eq!(run.stderr, "pushrun: -w: no hosts\n");
}

/// Ansible's own inventory examples (the "How to build your inventory"
/// guide), with `ansible_host` pointed at the loopback hosts.
fn ansible_yaml(hosts: &TestHosts) -> String {
    format!(
        "all:
  hosts:
    mail.example.com:
      ansible_host: {a0}
  children:
    webservers:
      hosts:
        foo.example.com:
          ansible_host: {a1}
        bar.example.com:
          ansible_host: {a2}
    dbservers:
      hosts:
        one.example.com:
          ansible_host: {a3}
        two.example.com:
          ansible_host: {a0}
        three.example.com:
          ansible_host: {a1}
    east:
      hosts:
        foo.example.com:
        one.example.com:
        two.example.com:
    west:
      hosts:
        bar.example.com:
        three.example.com:
    prod:
      children:
        east:
    test:
      children:
        west:
",
        a0 = hosts.addr(0),
        a1 = hosts.addr(1),
        a2 = hosts.addr(2),
        a3 = hosts.addr(3),
    )
}

fn ansible_ini(hosts: &TestHosts) -> String {
    format!(
        "mail.example.com ansible_host={a0}

[webservers]
foo.example.com ansible_host={a1}
bar.example.com ansible_host={a2}

[dbservers]
one.example.com ansible_host={a3}
two.example.com ansible_host={a0}
three.example.com ansible_host={a1}

[atlanta]
host1 ansible_host={a2} http_port=80 maxRequestsPerChild=808
host2 ansible_host={a3} http_port=303 maxRequestsPerChild=909

[atlanta:vars]
ntp_server=ntp.atlanta.example.com
proxy=proxy.atlanta.example.com

[southeast:children]
atlanta
raleigh
",
        a0 = hosts.addr(0),
        a1 = hosts.addr(1),
        a2 = hosts.addr(2),
        a3 = hosts.addr(3),
    )
}

#[test]
fn ansible_inventories_run_on_exactly_the_hosts_they_name() {
    let hosts = TestHosts::start(4);
    let yaml = hosts.write_yaml("inv.yml", &ansible_yaml(&hosts));
    let run = exec(&hosts, &yaml, &["--limit", "@prod", "echo", "hi"]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(
        hosts_with_output(&run.stdout),
        ["foo.example.com", "one.example.com", "two.example.com"],
        "{}",
        run.all()
    );

    let ini = hosts.write_yaml("inv.ini", &ansible_ini(&hosts));
    // Variables reach the command as the environment.
    let run = exec(
        &hosts,
        &ini,
        &[
            "--limit",
            "@southeast",
            "--",
            "echo \"$http_port $ntp_server\"",
        ],
    );
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(hosts_with_output(&run.stdout), ["host1", "host2"]);
    assert_eq!(
        crate::common::lines_of(&run.stdout, "host2"),
        ["303 ntp.atlanta.example.com"]
    );
    let run = exec(&hosts, &ini, &["--limit", "@webservers", "true"]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(run.stderr.contains("2 ok"), "{}", run.stderr);
}

#[test]
fn plain_lists_and_host_strings_run_on_exactly_the_hosts_they_name() {
    let hosts = TestHosts::start(3);
    let user = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout).unwrap();
    let user = user.trim();
    let list = hosts.write_yaml(
        "hosts.txt",
        &format!(
            "# the web hosts\n{}\n{user}@{}:{HOST_PORT}  # with user and port\n",
            hosts.addr(0),
            hosts.addr(1)
        ),
    );
    let run = exec(&hosts, &list, &["echo", "hi"]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(
        hosts_with_output(&run.stdout),
        sorted(vec![hosts.addr(0), hosts.addr(1)])
    );

    // -w ^FILE and -w user@host:port, the command without `--`.
    let out = pushrun()
        .args(["exec", "--ssh-config"])
        .arg(hosts.ssh_config())
        .arg("-w")
        .arg(format!("^{}", list.display()))
        .args(["-x", &hosts.addr(0), "echo", "-n", "x"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let run = to_run(out);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(hosts_with_output(&run.stdout), [hosts.addr(1)]);

    let good = format!("{user}@{}:{HOST_PORT}", hosts.addr(2));
    let wrong_port = format!("{}:{}", hosts.addr(0), HOST_PORT + 1);
    let out = pushrun()
        .args(["exec", "--ssh-config"])
        .arg(hosts.ssh_config())
        .args(["-w", &format!("{good},{wrong_port}"), "--", "echo", "hi"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let run = to_run(out);
    assert_eq!(run.code, 3, "{}", run.all());
    assert_eq!(hosts_with_output(&run.stdout), [hosts.addr(2)]);
    assert!(run.stderr.contains("1 ok"), "{}", run.stderr);
    assert!(run.stderr.contains("1 unreachable"), "{}", run.stderr);
}

#[test]
fn rerun_failed_selects_the_hosts_that_failed() {
    let hosts = TestHosts::start(4);
    let results = hosts.dir().join("results");
    let elsewhere = tempfile::tempdir().unwrap();
    let (bad1, bad2) = (hosts.addr(1), hosts.addr(3));
    let fail_two = format!(
        "case \" $SSH_CONNECTION \" in *\" {bad1} \"*|*\" {bad2} \"*) exit 1;; esac; echo fine"
    );
    let run = exec(
        &hosts,
        &hosts.hosts_yaml(),
        &["--results", results.to_str().unwrap(), "--", &fail_two],
    );
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(run.stderr.contains("2 failed"), "{}", run.stderr);

    // Nothing but --rerun and where the results are: the inventory and
    // ssh config come from the run's summary.json.
    let rerun = |args: &[&str]| {
        let out = pushrun()
            .args(["exec", "--rerun"])
            .args(args)
            .current_dir(elsewhere.path())
            .env_remove("PUSHRUN_HOSTS")
            .env("PUSHRUN_RESULTS", &results)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        to_run(out)
    };
    let run = rerun(&["failed", "--", "echo", "again"]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(hosts_with_output(&run.stdout), sorted(vec![bad1, bad2]));
    let last = summary(&results);
    assert_eq!(last["hosts"].as_array().unwrap().len(), 2, "{last:#}");

    let run = rerun(&["failed", "true"]);
    assert_eq!(run.code, 2, "{}", run.all());
    let run_id = last["run_id"].as_str().unwrap();
    assert!(
        run.stderr
            .contains(&format!("no host failed in run {run_id}: nothing to rerun")),
        "{}",
        run.stderr
    );
}

/// README.md's own inventory files (the fenced blocks whose first line is
/// `# file: NAME`) and its selection examples, each line of the form
/// `pushrun hosts … # → FOLDED LIST`.
#[test]
fn readme_selection_examples_select_what_they_say() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut files = 0;
    for block in readme.split("```").skip(1).step_by(2) {
        let body = block.split_once('\n').map_or("", |(_, body)| body);
        if let Some(name) = body.lines().next().and_then(|l| l.strip_prefix("# file: ")) {
            std::fs::write(dir.path().join(name.trim()), body).unwrap();
            files += 1;
        }
    }
    assert_eq!(
        files, 3,
        "hosts.yaml, inventory.ini and hosts.txt in README.md"
    );
    let marker = "contacts nothing and prints the hosts it selects";
    let section = &readme[readme.find(marker).expect("the examples in README.md")..];
    let block = section.split("```sh\n").nth(1).unwrap();
    let block = &block[..block.find("```").unwrap()];
    let bin = Path::new(env!("CARGO_BIN_EXE_pushrun")).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut examples = 0;
    for line in block.lines() {
        let (command, want) = line.split_once("# → ").expect("a `# → hosts` comment");
        let out = Command::new("sh")
            .arg("-c")
            .arg(command)
            .current_dir(dir.path())
            .env("PATH", &path)
            .env_remove("PUSHRUN_HOSTS")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let run = to_run(out);
        assert_eq!(run.code, 0, "{command}: {}", run.all());
        let folded = run
            .stderr
            .lines()
            .last()
            .and_then(|l| l.split_once(" hosts: "));
        assert_eq!(
            folded.map(|(_, hosts)| hosts),
            Some(want.trim()),
            "{command}: {}",
            run.all()
        );
        examples += 1;
    }
    assert!(examples >= 10, "{examples} examples");
}

#[test]
fn defaults_come_from_the_environment_and_flags_win() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("env.txt"), "e[1-2]\n").unwrap();
    std::fs::write(dir.path().join("flag.yaml"), "- f1\n").unwrap();
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut cmd = pushrun();
        cmd.args(args)
            .current_dir(dir.path())
            .env_remove("PUSHRUN_HOSTS")
            .stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        to_run(cmd.output().unwrap())
    };
    let from_env = run(&["hosts"], &[("PUSHRUN_HOSTS", "env.txt")]);
    assert_eq!(from_env.stderr, "pushrun: 2 hosts: e[1-2]\n");
    let flag = run(
        &["hosts", "--hosts", "flag.yaml"],
        &[("PUSHRUN_HOSTS", "env.txt")],
    );
    assert_eq!(flag.stderr, "pushrun: 1 hosts: f1\n");
    // PUSHRUN_FORKS is read, and checked, before any host is contacted.
    let forks = run(&["exec", "-w", "e1", "true"], &[("PUSHRUN_FORKS", "0")]);
    assert_eq!(forks.code, 2, "{}", forks.all());
    assert_eq!(forks.stderr, "pushrun: --forks must be at least 1\n");
    let missing = run(
        &["exec", "-w", "e1", "true"],
        &[("PUSHRUN_SSH_CONFIG", "no-such-config")],
    );
    assert_eq!(
        missing.stderr,
        "pushrun: no-such-config: ssh config file not found\n"
    );
}

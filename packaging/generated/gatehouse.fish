# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_gatehouse_global_optspecs
    string join \n log-level= log-target= h/help V/version
end

function __fish_gatehouse_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_gatehouse_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_gatehouse_using_subcommand
    set -l cmd (__fish_gatehouse_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c gatehouse -n "__fish_gatehouse_needs_command" -l log-level -d 'Log filter, e.g. "info", "debug", "gatehouse=debug,hyper=info" [default: RUST_LOG, then info]' -r
complete -c gatehouse -n "__fish_gatehouse_needs_command" -l log-target -d 'Where logs go: the journal\'s native protocol or plain lines on stderr' -r -f -a "auto\t'journald when systemd connected stderr to the journal (JOURNAL_STREAM), else stderr'
journald\t''
stderr\t''"
complete -c gatehouse -n "__fish_gatehouse_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c gatehouse -n "__fish_gatehouse_needs_command" -s V -l version -d 'Print version'
complete -c gatehouse -n "__fish_gatehouse_needs_command" -f -a "serve" -d 'Run the server (sockets from systemd, or bound from the configuration)'
complete -c gatehouse -n "__fish_gatehouse_needs_command" -f -a "check" -d 'Validate the configuration, print every error with file:line:column; exit 78 if invalid'
complete -c gatehouse -n "__fish_gatehouse_needs_command" -f -a "reload" -d 'Reload a running server synchronously (for ExecReload=): validate the configuration, send SIGHUP, wait for the outcome; exit 78 if the configuration is refused'
complete -c gatehouse -n "__fish_gatehouse_needs_command" -f -a "status" -d 'Print a summary of a running server, asked over its admin listener; exit 69 if unreachable'
complete -c gatehouse -n "__fish_gatehouse_needs_command" -f -a "deploy" -d 'Zero-downtime release of a deployable app (`proxy = { app = "APP" }`): start APP@INSTANCE.socket, health-check it, switch, drain and stop the old instance; exit 1 and change nothing if the new instance fails its check. Deploying the previous instance is the rollback'
complete -c gatehouse -n "__fish_gatehouse_needs_command" -f -a "generate" -d 'Write the man page (roff) or a shell completion script to stdout'
complete -c gatehouse -n "__fish_gatehouse_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c gatehouse -n "__fish_gatehouse_using_subcommand serve" -s c -l config -d 'Configuration file [default: /etc/gatehouse/gatehouse.toml, or the built-in welcome page when that file does not exist]' -r -F
complete -c gatehouse -n "__fish_gatehouse_using_subcommand serve" -l listen -d 'Quick mode: listen on ADDR (IP:PORT or unix:/path); repeatable. Used only when systemd passed no socket' -r
complete -c gatehouse -n "__fish_gatehouse_using_subcommand serve" -l root -d 'Quick mode: serve the files of DIR at / (index.html, no listing)' -r -F
complete -c gatehouse -n "__fish_gatehouse_using_subcommand serve" -l proxy -d 'Quick mode: proxy PREFIX to UPSTREAM (http://HOST:PORT or unix:/path); repeatable, a prefix given twice balances over both upstreams' -r
complete -c gatehouse -n "__fish_gatehouse_using_subcommand serve" -l log-level -d 'Log filter, e.g. "info", "debug", "gatehouse=debug,hyper=info" [default: RUST_LOG, then info]' -r
complete -c gatehouse -n "__fish_gatehouse_using_subcommand serve" -l log-target -d 'Where logs go: the journal\'s native protocol or plain lines on stderr' -r -f -a "auto\t'journald when systemd connected stderr to the journal (JOURNAL_STREAM), else stderr'
journald\t''
stderr\t''"
complete -c gatehouse -n "__fish_gatehouse_using_subcommand serve" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c gatehouse -n "__fish_gatehouse_using_subcommand check" -s c -l config -d 'Configuration file [default: /etc/gatehouse/gatehouse.toml]' -r -F
complete -c gatehouse -n "__fish_gatehouse_using_subcommand check" -l fd-names -d 'Names of the sockets systemd will pass (FileDescriptorName=), comma-separated: each must be claimed by a [[listener]], as `serve` requires' -r
complete -c gatehouse -n "__fish_gatehouse_using_subcommand check" -l log-level -d 'Log filter, e.g. "info", "debug", "gatehouse=debug,hyper=info" [default: RUST_LOG, then info]' -r
complete -c gatehouse -n "__fish_gatehouse_using_subcommand check" -l log-target -d 'Where logs go: the journal\'s native protocol or plain lines on stderr' -r -f -a "auto\t'journald when systemd connected stderr to the journal (JOURNAL_STREAM), else stderr'
journald\t''
stderr\t''"
complete -c gatehouse -n "__fish_gatehouse_using_subcommand check" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c gatehouse -n "__fish_gatehouse_using_subcommand reload" -l pid -d 'The server\'s pid (ExecReload=... --pid $MAINPID)' -r
complete -c gatehouse -n "__fish_gatehouse_using_subcommand reload" -s c -l config -d 'The configuration file the server uses [default: as `serve`]' -r -F
complete -c gatehouse -n "__fish_gatehouse_using_subcommand reload" -l timeout -d 'How long to wait for the server\'s outcome' -r
complete -c gatehouse -n "__fish_gatehouse_using_subcommand reload" -l log-level -d 'Log filter, e.g. "info", "debug", "gatehouse=debug,hyper=info" [default: RUST_LOG, then info]' -r
complete -c gatehouse -n "__fish_gatehouse_using_subcommand reload" -l log-target -d 'Where logs go: the journal\'s native protocol or plain lines on stderr' -r -f -a "auto\t'journald when systemd connected stderr to the journal (JOURNAL_STREAM), else stderr'
journald\t''
stderr\t''"
complete -c gatehouse -n "__fish_gatehouse_using_subcommand reload" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c gatehouse -n "__fish_gatehouse_using_subcommand status" -l admin -d 'Admin listener: a unix socket path or IP:PORT' -r
complete -c gatehouse -n "__fish_gatehouse_using_subcommand status" -l log-level -d 'Log filter, e.g. "info", "debug", "gatehouse=debug,hyper=info" [default: RUST_LOG, then info]' -r
complete -c gatehouse -n "__fish_gatehouse_using_subcommand status" -l log-target -d 'Where logs go: the journal\'s native protocol or plain lines on stderr' -r -f -a "auto\t'journald when systemd connected stderr to the journal (JOURNAL_STREAM), else stderr'
journald\t''
stderr\t''"
complete -c gatehouse -n "__fish_gatehouse_using_subcommand status" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c gatehouse -n "__fish_gatehouse_using_subcommand deploy" -l admin -d 'Admin listener: a unix socket path or IP:PORT' -r
complete -c gatehouse -n "__fish_gatehouse_using_subcommand deploy" -l service -d 'Started when the admin listener does not answer (gatehouse exited when idle)' -r
complete -c gatehouse -n "__fish_gatehouse_using_subcommand deploy" -l deploy-timeout -d 'How long the new instance has to start and answer 2xx [default: the route\'s deploy_timeout]' -r
complete -c gatehouse -n "__fish_gatehouse_using_subcommand deploy" -l drain-timeout -d 'How long to wait for the old instance\'s requests before stopping it [default: the route\'s drain_timeout]' -r
complete -c gatehouse -n "__fish_gatehouse_using_subcommand deploy" -l log-level -d 'Log filter, e.g. "info", "debug", "gatehouse=debug,hyper=info" [default: RUST_LOG, then info]' -r
complete -c gatehouse -n "__fish_gatehouse_using_subcommand deploy" -l log-target -d 'Where logs go: the journal\'s native protocol or plain lines on stderr' -r -f -a "auto\t'journald when systemd connected stderr to the journal (JOURNAL_STREAM), else stderr'
journald\t''
stderr\t''"
complete -c gatehouse -n "__fish_gatehouse_using_subcommand deploy" -l no-systemd -d 'The instance already runs, started by other means: no systemctl, only the health check, the switch and the drain'
complete -c gatehouse -n "__fish_gatehouse_using_subcommand deploy" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c gatehouse -n "__fish_gatehouse_using_subcommand generate" -l log-level -d 'Log filter, e.g. "info", "debug", "gatehouse=debug,hyper=info" [default: RUST_LOG, then info]' -r
complete -c gatehouse -n "__fish_gatehouse_using_subcommand generate" -l log-target -d 'Where logs go: the journal\'s native protocol or plain lines on stderr' -r -f -a "auto\t'journald when systemd connected stderr to the journal (JOURNAL_STREAM), else stderr'
journald\t''
stderr\t''"
complete -c gatehouse -n "__fish_gatehouse_using_subcommand generate" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c gatehouse -n "__fish_gatehouse_using_subcommand help; and not __fish_seen_subcommand_from serve check reload status deploy generate help" -f -a "serve" -d 'Run the server (sockets from systemd, or bound from the configuration)'
complete -c gatehouse -n "__fish_gatehouse_using_subcommand help; and not __fish_seen_subcommand_from serve check reload status deploy generate help" -f -a "check" -d 'Validate the configuration, print every error with file:line:column; exit 78 if invalid'
complete -c gatehouse -n "__fish_gatehouse_using_subcommand help; and not __fish_seen_subcommand_from serve check reload status deploy generate help" -f -a "reload" -d 'Reload a running server synchronously (for ExecReload=): validate the configuration, send SIGHUP, wait for the outcome; exit 78 if the configuration is refused'
complete -c gatehouse -n "__fish_gatehouse_using_subcommand help; and not __fish_seen_subcommand_from serve check reload status deploy generate help" -f -a "status" -d 'Print a summary of a running server, asked over its admin listener; exit 69 if unreachable'
complete -c gatehouse -n "__fish_gatehouse_using_subcommand help; and not __fish_seen_subcommand_from serve check reload status deploy generate help" -f -a "deploy" -d 'Zero-downtime release of a deployable app (`proxy = { app = "APP" }`): start APP@INSTANCE.socket, health-check it, switch, drain and stop the old instance; exit 1 and change nothing if the new instance fails its check. Deploying the previous instance is the rollback'
complete -c gatehouse -n "__fish_gatehouse_using_subcommand help; and not __fish_seen_subcommand_from serve check reload status deploy generate help" -f -a "generate" -d 'Write the man page (roff) or a shell completion script to stdout'
complete -c gatehouse -n "__fish_gatehouse_using_subcommand help; and not __fish_seen_subcommand_from serve check reload status deploy generate help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'

"""The user's machine: per-OS folders and transport, the daemon as a process, plug-in installs, atomic writes."""

#!/usr/bin/python3
"""Drives qsnapd's libvirt endpoint with the stock libvirt-python.

Usage: client.py URI RO_URI DOMAIN DIR [guest]

With "guest" the domain has a guest agent, and the script freezes and
thaws its filesystems and takes a quiesced snapshot instead.

Prints one line per step, "step: result", for the Go test to compare;
errors the steps expect are printed as their libvirt error code. An
unexpected exception ends the script with a traceback and status 1.
Overlays are created in DIR, named after the snapshot and the disk.
"""

import sys
import xml.etree.ElementTree as ET

import libvirt


def say(step, result):
    print(f"{step}: {result}", flush=True)


def code(f):
    """The libvirt error code f raises, or 'no error'."""
    try:
        f()
    except libvirt.libvirtError as e:
        return e.get_error_code()
    return "no error"


def names(snaps):
    return ",".join(s.getName() for s in snaps)


def disks(dom):
    """The domain's disks as (target, active image) from its XML."""
    doc = ET.fromstring(dom.XMLDesc())
    return [(d.find("target").get("dev"), d.find("source").get("file"))
            for d in doc.findall("devices/disk")]


def snapshot_xml(name, targets, overlay_dir):
    # Explicit overlays: the caller, not the daemon, names the files.
    disks = "".join(
        f"<disk name='{t}' snapshot='external'>"
        f"<source file='{overlay_dir}/{name}-{t}.qcow2'/></disk>"
        for t in targets)
    return f"<domainsnapshot><name>{name}</name><disks>{disks}</disks></domainsnapshot>"


DISK_ATOMIC = (libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY
               | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC)


def guest(conn, name, overlay_dir):
    dom = conn.lookupByName(name)
    targets = [t for t, _ in disks(dom)]
    say("fsFreeze", dom.fsFreeze())
    say("fsFreeze again", code(dom.fsFreeze))
    say("fsThaw", dom.fsThaw())
    s = dom.snapshotCreateXML(snapshot_xml("q1", targets, overlay_dir),
                              DISK_ATOMIC | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_QUIESCE)
    say("create q1 QUIESCE", s.getName())
    conn.close()
    say("done", "ok")


def main():
    uri, ro_uri, name, overlay_dir = sys.argv[1:5]
    conn = libvirt.open(uri)
    if sys.argv[5:] == ["guest"]:
        guest(conn, name, overlay_dir)
        return
    say("open", conn.getURI())
    dom = conn.lookupByName(name)
    say("lookupByName", dom.name())
    say("listAllDomains", ",".join(d.name() for d in conn.listAllDomains()))
    say("lookupByUUIDString", conn.lookupByUUIDString(dom.UUIDString()).name())
    state, max_mem, mem, vcpus, _ = dom.info()
    say("info", f"state={state} maxmem={max_mem} mem={mem} vcpus={vcpus}")
    targets = [t for t, _ in disks(dom)]
    say("XMLDesc", ",".join(targets))

    for snap in ("s1", "s2"):
        s = dom.snapshotCreateXML(snapshot_xml(snap, targets, overlay_dir), DISK_ATOMIC)
        say("create " + snap, s.getName())
    s = dom.snapshotCreateXML(snapshot_xml("nm", targets, overlay_dir),
                              DISK_ATOMIC | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA)
    say("create nm", s.getName())
    say("lookup nm", code(lambda: dom.snapshotLookupByName("nm")))
    say("disks after nm", ",".join(f for _, f in disks(dom)))

    say("listAllSnapshots", names(dom.listAllSnapshots()))
    say("listAllSnapshots ROOTS", names(dom.listAllSnapshots(libvirt.VIR_DOMAIN_SNAPSHOT_LIST_ROOTS)))
    say("listAllSnapshots LEAVES", names(dom.listAllSnapshots(libvirt.VIR_DOMAIN_SNAPSHOT_LIST_LEAVES)))
    say("listAllSnapshots TOPOLOGICAL", names(dom.listAllSnapshots(libvirt.VIR_DOMAIN_SNAPSHOT_LIST_TOPOLOGICAL)))
    say("listAllSnapshots NO_METADATA", names(dom.listAllSnapshots(libvirt.VIR_DOMAIN_SNAPSHOT_LIST_NO_METADATA)))

    s1 = dom.snapshotLookupByName("s1")
    say("snapshotLookupByName", s1.getName())
    s2 = dom.snapshotCurrent()
    say("snapshotCurrent", s2.getName())
    doc = ET.fromstring(s2.getXMLDesc())
    say("getXMLDesc", f"name={doc.findtext('name')} parent={doc.findtext('parent/name')} "
        f"state={doc.findtext('state')}")
    say("getParent s2", s2.getParent().getName())
    say("getParent s1", code(s1.getParent))
    say("isCurrent", f"s1={s1.isCurrent()} s2={s2.isCurrent()}")
    say("hasMetadata", s1.hasMetadata())
    say("listAllChildren s1", names(s1.listAllChildren()))
    say("listAllChildren s2", names(s2.listAllChildren()))

    say("lookupByName nosuch", code(lambda: conn.lookupByName("nosuch")))
    say("snapshotLookupByName nosuch", code(lambda: dom.snapshotLookupByName("nosuch")))
    say("create s1 again", code(lambda: dom.snapshotCreateXML(
        snapshot_xml("s1", targets, overlay_dir + "/again"), DISK_ATOMIC)))

    # A merge: s2's overlays go into s1's, below nm's.
    s2.delete()
    say("delete s2", names(dom.listAllSnapshots()))
    say("snapshotCurrent after delete", dom.snapshotCurrent().getName())
    s4 = dom.snapshotCreateXML(snapshot_xml("s4", targets, overlay_dir), DISK_ATOMIC)
    say("create s4", s4.getName())
    s4.delete(libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY)
    say("delete s4 METADATA_ONLY", names(dom.listAllSnapshots()))

    # No guest agent is configured: the engine's AgentUnresponsive.
    say("fsFreeze", code(dom.fsFreeze))
    say("fsThaw", code(dom.fsThaw))

    ro = libvirt.openReadOnly(ro_uri)
    rodom = ro.lookupByName(name)
    say("ro listAllSnapshots", names(rodom.listAllSnapshots()))
    say("ro snapshotCreateXML", code(lambda: rodom.snapshotCreateXML(
        snapshot_xml("ro", targets, overlay_dir), DISK_ATOMIC)))
    ro.close()
    conn.close()
    say("done", "ok")


if __name__ == "__main__":
    main()

package dbusapi

const introspectableIface = "org.freedesktop.DBus.Introspectable"

// introspection describes the object at ObjectPath; it is the reference
// of the D-Bus API. Errors are named io.github.qsnapd.Error.<Code> (see
// the Error* constants) and carry the message as their body.
const introspection = `<!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object Introspection 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd">
<node>
  <interface name="io.github.qsnapd.Manager1">
    <!-- Registered domains, by name: name, QMP socket path, connected, frozen. -->
    <method name="ListDomains">
      <arg name="domains" type="a(ssbb)" direction="out"/>
    </method>
    <!-- A domain's snapshots, oldest first: name, parent ("" for a root), state. -->
    <method name="ListSnapshots">
      <arg name="domain" type="s" direction="in"/>
      <arg name="snapshots" type="a(sss)" direction="out"/>
    </method>
    <!-- As virDomainSnapshotCreateXML: flags are virDomainSnapshotCreateFlags. -->
    <method name="CreateSnapshot">
      <arg name="domain" type="s" direction="in"/>
      <arg name="xml" type="s" direction="in"/>
      <arg name="flags" type="u" direction="in"/>
      <arg name="name" type="s" direction="out"/>
      <arg name="xml" type="s" direction="out"/>
    </method>
    <!-- As virDomainSnapshotDelete: flags are virDomainSnapshotDeleteFlags
         (1 CHILDREN, 2 METADATA_ONLY, 4 CHILDREN_ONLY). Without METADATA_ONLY
         each overlay is merged into its base, all disks or none. Returns the
         operation id, as SnapshotDeleted and the HTTP API's
         /v1/operations/{id} name it, and the snapshots deleted, deepest
         first. -->
    <method name="DeleteSnapshot">
      <arg name="domain" type="s" direction="in"/>
      <arg name="name" type="s" direction="in"/>
      <arg name="flags" type="u" direction="in"/>
      <arg name="operation" type="s" direction="out"/>
      <arg name="deleted" type="as" direction="out"/>
    </method>
    <!-- Freezes the guest's filesystems (all if mountpoints is empty) until
         FSThaw or the daemon's max-freeze deadline. -->
    <method name="FSFreeze">
      <arg name="domain" type="s" direction="in"/>
      <arg name="mountpoints" type="as" direction="in"/>
      <arg name="count" type="i" direction="out"/>
    </method>
    <method name="FSThaw">
      <arg name="domain" type="s" direction="in"/>
      <arg name="count" type="i" direction="out"/>
    </method>
    <signal name="SnapshotCreated">
      <arg name="domain" type="s"/>
      <arg name="name" type="s"/>
    </signal>
    <signal name="SnapshotFailed">
      <arg name="domain" type="s"/>
      <arg name="name" type="s"/>
      <arg name="error" type="s"/>
    </signal>
    <!-- A delete that got past validation ended: names deepest first; result
         is success, failure, cancelled (nothing changed) or partial. -->
    <signal name="SnapshotDeleted">
      <arg name="domain" type="s"/>
      <arg name="names" type="as"/>
      <arg name="operation" type="s"/>
      <arg name="result" type="s"/>
    </signal>
    <!-- owner is "snapshot" (a quiesced snapshot) or "fsfreeze" (FSFreeze). -->
    <signal name="GuestFrozen">
      <arg name="domain" type="s"/>
      <arg name="owner" type="s"/>
    </signal>
    <signal name="GuestThawed">
      <arg name="domain" type="s"/>
      <arg name="frozen_seconds" type="d"/>
    </signal>
  </interface>
  <interface name="org.freedesktop.DBus.Introspectable">
    <method name="Introspect">
      <arg name="xml_data" type="s" direction="out"/>
    </method>
  </interface>
  <interface name="org.freedesktop.DBus.Peer">
    <method name="Ping"/>
    <method name="GetMachineId">
      <arg name="machine_uuid" type="s" direction="out"/>
    </method>
  </interface>
</node>
`

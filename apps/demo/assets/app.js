// The demo's browser code: the unmodified npm packages, loaded through the import map.
import "@hotwired/turbo"
import { Application } from "@hotwired/stimulus"
import { createConsumer } from "@rails/actioncable"
import CableReady from "cable_ready"
import StimulusReflex from "stimulus_reflex"

// The cable client: `@rails/actioncable` by default; `?cable=anycable` (remembered for the tab)
// switches to `@anycable/web`'s Action Cable-compatible consumer on AnyCable's extended
// protocol, whose session restore and history replay deliver what was sent while offline.
const params = new URLSearchParams(location.search)
if (params.has("cable")) sessionStorage.setItem("ferrocable.cable", params.get("cable"))
const anycable = sessionStorage.getItem("ferrocable.cable") === "anycable"

const application = Application.start()
const cableUrl = new URL(document.querySelector('meta[name="action-cable-url"]').content, location.href)
cableUrl.protocol = cableUrl.protocol.replace(/^http/, "ws")
const consumer = anycable
  ? (await import("@anycable/web")).createConsumer(cableUrl.href, {
      protocol: "actioncable-v1-ext-json",
      protocolOptions: { pongs: true },
      performFailures: "warn",
      logLevel: "error",
    })
  : createConsumer()
application.consumer = consumer
CableReady.initialize({ consumer })
StimulusReflex.initialize(application, { isolate: true, deprecate: false })

// Clear a submitted form's text input once its reflex has finished.
document.addEventListener("stimulus-reflex:after", (event) => {
  const form = event.target.closest && event.target.closest("form")
  if (form && form.id !== "chat-form") form.reset()
  if (form && form.id === "chat-form") { const t = form.querySelector("#chat-text"); if (t) t.value = "" }
})
// The chat's typing indicator: a whisper to everyone else on `TypingChannel` (never echoed to
// the typist, never stored), at most one a second while typing; shown for 3 s. Set up on every
// page that has it (Turbo navigation included) and dropped when the page goes.
window.typingSeen = []
let typing = null
function setUpTyping() {
  const element = document.getElementById("chat-typing")
  if (typing && typing.element === element) return
  if (typing) typing.subscription.unsubscribe()
  typing = null
  if (!element) return
  let hide
  // Presence: who is on the chat page (one entry per session), kept from the join and leave
  // events after the first `info`.
  const present = document.getElementById("chat-present")
  const here = new Map()
  const show = () => {
    present.textContent = [...here.values()].map((i) => (i && i.name) || "Someone").sort().join(", ")
  }
  const onPresence = (event) => {
    if (event.type === "info") {
      here.clear()
      for (const r of event.records || []) here.set(r.id, r.info)
    } else if (event.type === "join") here.set(event.id, event.info)
    else if (event.type === "leave") here.delete(event.id)
    else return
    show()
  }
  const me = {
    id: present.dataset.presenceId,
    info: { name: (document.getElementById("chat-name").value.trim() || "Someone").slice(0, 40) },
  }
  const subscription = consumer.subscriptions.create({ channel: "TypingChannel" }, {
    connected() {
      // @rails/actioncable hands presence frames to `received`; the commands go as they are.
      if (subscription.channel) return
      consumer.send({ command: "join", identifier: subscription.identifier, presence: me })
      consumer.send({ command: "presence", identifier: subscription.identifier, data: {} })
    },
    received(message) {
      if (message && ["join", "leave", "info"].includes(message.type)) return onPresence(message)
      if (!message || typeof message.typing !== "string") return
      window.typingSeen.push(message.typing)
      element.textContent = `${message.typing} is typing…`
      clearTimeout(hide)
      hide = setTimeout(() => { element.textContent = "" }, 3000)
    },
  })
  typing = { element, subscription }
  if (subscription.channel) {
    // @anycable/web: its channel speaks presence itself.
    const channel = subscription.channel
    channel.on("presence", onPresence)
    channel.presence.join(me.id, me.info)
    channel.presence.info().then((state) => {
      for (const [id, info] of Object.entries(state || {})) here.set(id, info)
      show()
    }).catch(() => {})
  }
  // @anycable/web's subscriptions whisper themselves; @rails/actioncable sends the command.
  const whisper = (data) => subscription.whisper
    ? subscription.whisper(data)
    : consumer.send({ command: "whisper", identifier: subscription.identifier, data })
  let last = 0
  document.getElementById("chat-text").addEventListener("input", () => {
    if (Date.now() - last < 1000) return
    last = Date.now()
    const name = document.getElementById("chat-name").value.trim() || "Someone"
    whisper({ typing: name.slice(0, 40) })
  })
}
setUpTyping()
document.addEventListener("turbo:load", setUpTyping)
window.ferrocable = { application, consumer, client: anycable ? "@anycable/web" : "@rails/actioncable" }
